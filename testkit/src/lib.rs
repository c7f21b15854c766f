//! Test and bench support the crates share (dev-only, never shipped): a
//! federation of clusters in one process, each a file store with a real
//! controller (`cluster`), the benches' child processes and their `/proc`
//! readings (`procs`), mTLS load over one path and its quantiles (`load`),
//! and certificate fixtures that can break one rule at a time (`pki`). A
//! crate's tests and benches take these from here rather than from another
//! crate's files.

pub mod cluster;
pub mod load;
pub mod pki;
pub mod procs;
