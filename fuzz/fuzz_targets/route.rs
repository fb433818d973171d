//! A REST path template and a request path (`0xff` between them): parsing, matching, routing against the API's routes and the OpenAPI rendering.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_gateway::fuzzing::route(data));
