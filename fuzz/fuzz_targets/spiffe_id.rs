//! SPIFFE IDs arrive inside peer certificates and CSRs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = meshfed_trust::SpiffeId::parse(s) {
            // What parses must print back to the same string and parse again.
            assert_eq!(id.to_string(), s);
            assert_eq!(
                meshfed_trust::SpiffeId::parse(&id.to_string()).as_ref(),
                Ok(&id)
            );
            let _ = id.workload();
        }
    }
});
