//! Integration tests of meshfed-identity: the identity service end to end.

mod identity;
