//! Token decoding, both kinds, under the right key, another key and no key.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| twintoken_fuzz::token_decode(data));
