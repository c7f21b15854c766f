//! Test and bench support the crates share (dev-only, never shipped): the
//! benches' child processes and their `/proc` readings (`procs`), mTLS
//! load over one path and its quantiles (`load`), and a mesh PKI with a
//! controller on a file store (`mesh`). A crate's tests and benches take
//! these from here rather than from another crate's files.

pub mod load;
pub mod mesh;
pub mod procs;
