//! Server names arrive in every ClientHello a gateway reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshfed_api::sni;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(target) = sni::parse(s) {
            // What parses names the same target when printed and parsed again.
            assert_eq!(sni::parse(&target.to_string()).as_ref(), Ok(&target));
            assert!(s.eq_ignore_ascii_case(&target.to_string()));
        }
    }
});
