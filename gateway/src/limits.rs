//! Admission: a global connection cap (beyond it new connections are shed
//! at once rather than queued) and a cap per source address, so one noisy
//! client cannot take the gateway from everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::metrics::Reason;

/// The caps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once from one source IP.
    pub max_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_per_source: 10_000,
        }
    }
}

/// Counts open connections against the caps.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Holds a connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Permit {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::default(),
        })
    }

    /// A place for a connection from `source`, or why there is none.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Permit, Reason> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.limits.max_connections {
            return Err(Reason::Overloaded);
        }
        let n = open.by_source.entry(source).or_default();
        if *n >= self.limits.max_per_source {
            return Err(Reason::SourceLimit);
        }
        *n += 1;
        open.total += 1;
        Ok(Permit {
            admission: self.clone(),
            source,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_source_and_in_total() {
        let a = Admission::new(Limits {
            max_connections: 3,
            max_per_source: 2,
        });
        let (x, y, z): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
            "10.0.0.3".parse().expect("ip"),
        );
        let p1 = a.admit(x).expect("first");
        let _p2 = a.admit(x).expect("second");
        assert_eq!(a.admit(x).err(), Some(Reason::SourceLimit));
        let _p3 = a.admit(y).expect("other source");
        assert_eq!(a.admit(z).err(), Some(Reason::Overloaded));
        drop(p1);
        assert_eq!(a.open(), 2);
        a.admit(x).expect("a freed place is reusable");
        assert_eq!(a.open(), 2, "the permit was dropped at once");
    }
}
