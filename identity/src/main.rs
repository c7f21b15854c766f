//! meshfed-identity: the cluster's identity service. Signs workload CSRs
//! with the cluster intermediate after proving the caller's credential.

fn main() -> anyhow::Result<()> {
    meshfed_identity::binary_main(std::env::args_os())
}
