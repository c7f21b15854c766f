//! Integration tests of the mirror controller: real file stores, real tonic
//! over real mTLS on loopback, a gateway stand-in that routes by SNI.

mod binary;
mod federation;
mod support;
