//! meshfed-controller: the cluster's mirror controller. Reads the cluster
//! through a store (a manifest directory or the Kubernetes API), serves its
//! exports to linked peers and discovery to sidecars and gateways.

fn main() -> anyhow::Result<()> {
    meshfed_controller::binary_main(std::env::args_os())
}
