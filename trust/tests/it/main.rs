//! Integration tests of meshfed-trust: one test binary, one module per area.

mod bundle;
mod tls;
mod verifier;
