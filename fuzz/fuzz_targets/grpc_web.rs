//! A gRPC-Web body: base64 text decoding and frame splitting in any chunking.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| palisade_gateway::fuzzing::grpc_web(data));
