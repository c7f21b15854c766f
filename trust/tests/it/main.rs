//! Integration tests of meshfed-trust: one test binary, one module per area.

mod bundle;
mod identity;
mod support;
mod tls;
mod verifier;
