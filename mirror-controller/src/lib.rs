//! Meshfed's mirror controller: knows what its cluster exports, learns what
//! linked clusters export, keeps mirrors of them, watches their health and
//! tells sidecars and gateways where a service lives.
//!
//! Built so far: validation of `Link` and `FailoverPolicy` specs and the
//! `Accepted` condition that reports it.

mod validate;

pub use validate::{FieldError, accepted_condition, validate_failover_policy, validate_link};
