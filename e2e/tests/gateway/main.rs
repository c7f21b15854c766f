//! The east-west gateway with the rest of a federation: a real controller
//! on a file store streams routes, the gateway runs in-process on loopback,
//! and real mesh mTLS runs end to end through it.

mod lifecycle;
mod passthrough;
mod refusals;
mod support;
