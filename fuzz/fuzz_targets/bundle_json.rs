//! SPIFFE bundle JSON comes from files and, later, from peers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let td = meshfed_trust::TrustDomain::new("fuzz.example").expect("td");
        let _ = meshfed_trust::TrustBundle::from_spiffe_json(td, s);
    }
});
