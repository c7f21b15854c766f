//! meshfed-sidecar: the workload's proxy (`run`), and the interception
//! rules a pod's init container installs (`init-iptables`).

/// mimalloc, not glibc's malloc: a request allocates a few dozen small
/// blocks and frees them on the same thread, and under load many requests
/// are in flight at once, more than glibc's per-thread cache holds for one
/// size (7), so glibc fell back to its locked arena for a tenth of the
/// sidecar's instructions at saturation (callgrind, BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    meshfed_sidecar::binary_main(std::env::args_os())
}
