//! The sidecar end to end: real controllers on file stores, the real
//! gateway, real mTLS on loopback; apps behind real server sidecars.

mod authz;
mod failover;
mod limits;
mod netns;
mod protocols;
mod resilience;
mod support;
mod transparent;
mod transparent_inbound;
mod waiting;
