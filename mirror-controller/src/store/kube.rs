//! PLACEHOLDER — replaced by the kube backend.
#[derive(Debug)]
pub struct KubeStore;
