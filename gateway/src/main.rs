//! meshfed-gateway: the cluster's east-west gateway. Passes mTLS through by
//! SNI to the Services this cluster exports, reaches the local controller's
//! federation service, and answers remote controllers' probes.

fn main() -> anyhow::Result<()> {
    meshfed_gateway::binary_main(std::env::args_os())
}
