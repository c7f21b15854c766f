//! meshfed-injector: the cluster's sidecar injector, a mutating admission
//! webhook for the pods of namespaces labelled meshfed.io/inject=enabled.

fn main() -> anyhow::Result<()> {
    meshfed_injector::binary_main(std::env::args_os())
}
