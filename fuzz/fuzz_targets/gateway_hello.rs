//! Every connection to a gateway starts with bytes from anyone: the
//! ClientHello reader must never panic, must hold no more than its bound, and
//! must reach the same verdict however the bytes are split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshfed_api::sni;
use meshfed_gateway::{HelloReader, MAX_BUFFERED};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let whole = HelloReader::new().feed(bytes);
    let mut reader = HelloReader::new();
    let mut chunked = Ok(None);
    for chunk in bytes.chunks(usize::from(cut).max(1)) {
        chunked = reader.feed(chunk);
        assert!(reader.len() <= MAX_BUFFERED);
        if !matches!(chunked, Ok(None)) {
            break;
        }
    }
    assert_eq!(whole, chunked);
    if let Ok(Some(hello)) = whole
        && let Some(name) = hello.server_name
    {
        let _ = sni::parse(&name);
    }
});
