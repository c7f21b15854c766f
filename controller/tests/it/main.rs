//! Integration tests of the mirror controller: real file stores, the kube
//! store against a stand-in API server, real tonic
//! over real mTLS on loopback, the real east-west gateway (meshfed-gateway) routing by SNI.

mod binary;
mod federation;
mod file_store;
mod kube_store;
mod support;
