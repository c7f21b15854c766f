//! The Kubernetes resources Meshfed reads and writes: its own custom
//! resources (group `meshfed.io`) and the Gateway API's HTTPRoute. Types and
//! their CRDs, and builders of objects shaped as a cluster writes them
//! (`objects`); no logic. The control plane and `meshctl` link this
//! crate; the data plane (gateway, sidecar) does not, so it never links a
//! Kubernetes client.

pub mod crd;
pub mod objects;
pub mod route;
