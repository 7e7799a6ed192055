//! HTTP inputs of /v1/verify, /v1/login, /v1/logout and the code endpoints.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| twintoken_fuzz::http_input(data));
