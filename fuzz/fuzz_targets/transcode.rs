//! A query string, a path value and a JSON body (`0xff` between them) for every REST binding of the API, and the body decoded as each response.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_gateway::fuzzing::transcode(data));
