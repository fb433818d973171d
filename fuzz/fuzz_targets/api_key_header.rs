//! `authorization` and `x-api-key` header values (`0xff` between them) through the credential parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_gateway::fuzzing::api_key_header(data));
