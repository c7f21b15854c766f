//! The Kubernetes resources Meshfed reads and writes: its own custom
//! resources (group `meshfed.io`) and the Gateway API's HTTPRoute. Types and
//! their CRDs only, no logic. The control plane and `meshctl` link this
//! crate; the data plane (gateway, sidecar) does not, so it never links a
//! Kubernetes client.

pub mod crd;
pub mod route;
