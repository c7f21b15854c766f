//! Doubt of a fresh snapshot that drops much of what a peer exported.
//!
//! A snapshot opens every federation stream. When one arrives without a
//! large share of the services this controller imports from that peer —
//! at least [`DOUBT_MIN`] services and at least half of them — it is more
//! likely a peer controller that has not finished reading its cluster (or a
//! bug) than thousands of services unexported at once, and deleting
//! thousands of live mirrors is far worse than keeping them a little
//! longer. So the missing services are *doubted*: kept, as they were, for
//! the hold ([`DOUBT_HOLD`], 30 s, unless the controller is configured
//! otherwise), while the stream's diffs go on as usual. A diff that sends
//! one of them makes it current again; a diff that removes one, or the end
//! of the hold, lets it go. A later snapshot never extends a hold, so a
//! peer that really unexported them loses them when the first hold ends
//! whatever its stream does. Removals sent as diffs are never doubted:
//! the peer says them one by one, as they happen.

use std::time::Duration;

use tokio::time::Instant;

use crate::local::ExportSet;
use crate::store::ObjKey;

/// Fewest services a snapshot must drop to be doubted.
pub(crate) const DOUBT_MIN: usize = 10;
/// How long doubted services are kept, unless the controller is
/// configured otherwise.
pub const DOUBT_HOLD: Duration = Duration::from_secs(30);

/// Services a fresh snapshot dropped, kept until `until`.
#[derive(Debug, Clone)]
pub(crate) struct Doubt {
    hold: Duration,
    held: ExportSet,
    until: Option<Instant>,
}

impl Doubt {
    /// Doubts for `hold` at a time.
    pub(crate) fn new(hold: Duration) -> Self {
        Self {
            hold,
            held: ExportSet::new(),
            until: None,
        }
    }

    /// Judges a snapshot against what was imported before it; returns how
    /// many services it starts doubting now.
    pub(crate) fn snapshot(
        &mut self,
        before: Option<&ExportSet>,
        snapshot: &ExportSet,
        now: Instant,
    ) -> usize {
        self.expire(now);
        let Some(before) = before else { return 0 };
        let missing: Vec<(&ObjKey, _)> = before
            .iter()
            .filter(|(k, _)| !snapshot.contains_key(*k))
            .collect();
        if missing.len() < DOUBT_MIN || missing.len() * 2 < before.len() {
            // Believed: what it drops goes, held or not.
            self.held.clear();
            self.until = None;
            return 0;
        }
        let mut fresh = 0;
        for (k, svc) in missing {
            if !self.held.contains_key(k) {
                fresh += 1;
                self.held.insert(k.clone(), svc.clone());
            }
        }
        self.keep_only_missing_from(snapshot);
        self.until.get_or_insert(now + self.hold);
        fresh
    }

    /// A diff from the peer: what it sends or removes is no longer doubted.
    pub(crate) fn settled(&mut self, current: &ExportSet, removed: &[ObjKey]) {
        self.keep_only_missing_from(current);
        for k in removed {
            self.held.remove(k);
        }
        if self.held.is_empty() {
            self.until = None;
        }
    }

    /// Stops doubting what `set` holds again.
    fn keep_only_missing_from(&mut self, set: &ExportSet) {
        let back: Vec<ObjKey> = self
            .held
            .keys()
            .filter(|k| set.contains_key(*k))
            .cloned()
            .collect();
        for k in back {
            self.held.remove(&k);
        }
    }

    /// Ends the hold once its time is up; `true` if it ended now.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        if self.until.is_some_and(|u| now >= u) {
            self.held.clear();
            self.until = None;
            return true;
        }
        false
    }

    /// When the hold ends, while there is one.
    pub(crate) fn until(&self) -> Option<Instant> {
        self.until
    }

    /// How many services are doubted.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// What the peer exports plus what is doubted: the imports to act on.
    pub(crate) fn imports(&self, current: &ExportSet) -> ExportSet {
        let mut out = current.clone();
        for (k, svc) in &self.held {
            out.entry(k.clone()).or_insert_with(|| svc.clone());
        }
        out
    }

    /// Forgets everything (the peer was withdrawn).
    pub(crate) fn clear(&mut self) {
        self.held.clear();
        self.until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshfed_api::federation::ExportedService;

    fn set(range: std::ops::Range<usize>) -> ExportSet {
        range
            .map(|i| {
                let name = format!("svc-{i}");
                let svc = ExportedService {
                    namespace: "shop".into(),
                    name: name.clone(),
                    ..ExportedService::default()
                };
                (ObjKey::new("shop", name), svc)
            })
            .collect()
    }

    #[test]
    fn a_snapshot_dropping_most_services_is_doubted_for_the_hold_only() {
        let t0 = Instant::now();
        let mut d = Doubt::new(DOUBT_HOLD);
        let before = set(0..100);
        let partial = set(0..40);
        assert_eq!(d.snapshot(Some(&before), &partial, t0), 60);
        assert_eq!(d.imports(&partial).len(), 100, "nothing dropped yet");
        assert_eq!(d.until(), Some(t0 + DOUBT_HOLD));

        // A second partial snapshot (the stream reconnected) does not extend the hold.
        let later = t0 + Duration::from_secs(10);
        let imports = d.imports(&partial);
        assert_eq!(d.snapshot(Some(&imports), &set(0..45), later), 0);
        assert_eq!(d.len(), 55);
        assert_eq!(d.until(), Some(t0 + DOUBT_HOLD));

        // Diffs settle what they name.
        let mut current = set(0..50);
        d.settled(&current, &[ObjKey::new("shop", "svc-99")]);
        assert_eq!(d.len(), 49, "svc-45..49 sent again, svc-99 removed");
        current.remove(&ObjKey::new("shop", "svc-0"));
        assert_eq!(
            d.imports(&current).len(),
            98,
            "a removal the peer sends applies at once"
        );

        assert!(!d.expire(t0 + DOUBT_HOLD - Duration::from_millis(1)));
        assert!(d.expire(t0 + DOUBT_HOLD));
        assert_eq!(d.imports(&current).len(), 49, "the hold is over");
        assert_eq!(d.until(), None);
    }

    #[test]
    fn small_or_partial_drops_are_believed() {
        let t0 = Instant::now();
        let mut d = Doubt::new(DOUBT_HOLD);
        assert_eq!(d.snapshot(None, &set(0..1), t0), 0, "nothing known before");
        assert_eq!(d.snapshot(Some(&set(0..12)), &set(0..3), t0), 0, "9 < 10");
        assert_eq!(
            d.snapshot(Some(&set(0..100)), &set(0..51), t0),
            0,
            "49 of 100 is under half"
        );
        assert_eq!(d.imports(&set(0..51)).len(), 51);
        assert_eq!(d.until(), None);
    }

    #[test]
    fn a_full_snapshot_ends_a_hold() {
        let t0 = Instant::now();
        let mut d = Doubt::new(DOUBT_HOLD);
        assert_eq!(d.snapshot(Some(&set(0..100)), &set(0..10), t0), 90);
        let full = set(0..100);
        assert_eq!(d.snapshot(Some(&d.imports(&set(0..10))), &full, t0), 0);
        assert_eq!(d.len(), 0);
        assert_eq!(d.until(), None);
    }
}
