//! Integration tests of the mirror controller: real file stores, real tonic
//! over real mTLS on loopback, the real east-west gateway (meshfed-gateway) routing by SNI.

mod binary;
mod federation;
mod support;
