//! Dev-only: the tests and benches that run the data plane with the rest of
//! a federation — a real controller on a file store, the real CA, the
//! gateway and sidecars together. A component's own tests live in its
//! crate and run it alone; these are here so that neither the sidecar nor
//! the gateway depends, even for its tests, on the control plane (and so
//! on a Kubernetes client).
//!
//! - `tests/sidecar`: the sidecar's request path end to end (failover,
//!   authorization, limits, protocols, transparent interception in network
//!   namespaces).
//! - `tests/gateway`: the east-west gateway's routing, refusals and
//!   lifecycle, with routes streamed by a real controller.
//! - `benches/proxy` and `benches/passthrough`: the sidecar pair against
//!   nginx and the gateway against HAProxy (BENCHMARKS.md). They run the
//!   release binaries, which [`binaries`] finds.

pub mod binaries;
