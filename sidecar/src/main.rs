//! meshfed-sidecar: the workload's proxy (`run`), and the interception
//! rules a pod's init container installs (`init-iptables`).

fn main() -> anyhow::Result<()> {
    meshfed_sidecar::binary_main(std::env::args_os())
}
