//! Session affinity (the FailoverPolicy's `consistentHash`): a request
//! carrying a key — a header's value, or a cookie's — goes to the endpoint
//! the key hashes to, for as long as that endpoint can serve.
//!
//! A ring rather than Maglev: each endpoint of a group owns `POINTS` points
//! on a ring of 64-bit hashes and a key belongs to the first point at or
//! after its own hash. An endpoint that cannot serve (down, ejected, not
//! ready, or already tried by this request) is passed over on the ring, so
//! exactly its keys move — to the endpoints after its points — and every
//! other key stays put, with no table to rebuild when health changes.
//! Maglev's table gives O(1) lookups but moves a few more keys than the
//! minimum when an endpoint goes, and must be rebuilt to pass one over;
//! with the few dozen endpoints of a group, the ring's binary search is
//! a handful of comparisons.
//!
//! The group follows the key too: among the groups the spill rule gives a
//! share, the key picks one in proportion to the shares, so while health
//! holds a key stays in its group.

use http::HeaderMap;
use http::header::{COOKIE, HeaderName};
use meshfed_api::discovery::Policy;
use tokio::time::Instant;

use super::{Balancer, Group, NoPick, Pick};
use std::sync::Arc;

/// Points per endpoint: with 128, an endpoint's share of the keys is
/// within a few percent of 1/N.
const POINTS: u64 = 128;

/// Where a request's key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Affinity {
    Header(HeaderName),
    Cookie(String),
}

impl Affinity {
    pub(super) fn from_wire(p: Option<&Policy>) -> Option<Self> {
        let p = p?;
        if !p.hash_header.is_empty() {
            return HeaderName::from_bytes(p.hash_header.as_bytes())
                .ok()
                .map(Self::Header);
        }
        (!p.hash_cookie.is_empty()).then(|| Self::Cookie(p.hash_cookie.clone()))
    }

    /// The request's key, hashed; `None` when it carries none.
    pub(crate) fn key(&self, headers: &HeaderMap) -> Option<u64> {
        match self {
            Self::Header(name) => headers.get(name).map(|v| hash(v.as_bytes())),
            Self::Cookie(name) => headers
                .get_all(COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
                .find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let eq = pair.iter().position(|b| *b == b'=')?;
                    (&pair[..eq] == name.as_bytes()).then(|| hash(&pair[eq + 1..]))
                }),
        }
    }
}

/// A stable 64-bit hash (FNV-1a, then a SplitMix64 finish for spread):
/// every sidecar maps a key to the same point.
pub(super) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A group's ring: `(point, member index)`, sorted by point.
pub(super) fn ring(group: &Group) -> Vec<(u64, u32)> {
    let mut ring = Vec::with_capacity(group.members.len() * POINTS as usize);
    for (i, m) in group.members.iter().enumerate() {
        let base = hash(m.info.key.as_bytes());
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        ring.extend((0..POINTS).map(|p| (mix(base ^ p.wrapping_mul(0x9e37_79b9)), i)));
    }
    ring.sort_unstable();
    ring
}

impl Balancer {
    /// Picks the endpoint key `key` belongs to, avoiding `exclude` while
    /// any other can serve.
    pub(crate) fn pick_keyed(
        &mut self,
        now: Instant,
        key: u64,
        exclude: &[Arc<str>],
    ) -> Result<Pick, NoPick> {
        if self.groups.iter().all(|g| g.members.is_empty()) {
            return Err(NoPick::NoEndpoints);
        }
        self.update_shares(now);
        let any = |b: &Self, ex: &[Arc<str>]| (0..b.groups.len()).any(|i| b.can_serve(i, now, ex));
        let exclude = if any(self, exclude) { exclude } else { &[] };
        let serving: Vec<usize> = (0..self.groups.len())
            .filter(|i| self.can_serve(*i, now, exclude))
            .collect();
        let weighted: Vec<(usize, u32)> = serving
            .iter()
            .map(|i| (*i, self.shares.get(*i).copied().unwrap_or(0)))
            .filter(|(_, s)| *s > 0)
            .collect();
        let total: u64 = weighted.iter().map(|(_, s)| u64::from(*s)).sum();
        let gi = if total > 0 {
            // Another mix of the key than the ring's: where a key lands
            // among groups says nothing of where it lands in one.
            let mut roll = mix(key ^ 0x5bd1_e995) % total;
            weighted
                .iter()
                .find(|(_, s)| {
                    let s = u64::from(*s);
                    if roll < s {
                        true
                    } else {
                        roll -= s;
                        false
                    }
                })
                .map(|(i, _)| *i)
        } else {
            serving.first().copied()
        };
        let Some(gi) = gi else {
            return Err(NoPick::NoneHealthy);
        };
        let candidates: Vec<usize> = self.candidates(gi, now, exclude).collect();
        let ring = &self.groups[gi].ring;
        let start = ring.partition_point(|(p, _)| *p < key);
        let walk = ring[start..].iter().chain(&ring[..start]);
        let mi = walk
            .map(|(_, m)| *m as usize)
            .find(|m| candidates.contains(m))
            .or_else(|| candidates.first().copied())
            .ok_or(NoPick::NoneHealthy)?;
        Ok(self.pick_of(gi, mi))
    }
}
