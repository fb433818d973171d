//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) over every parser of untrusted
//! input on the public port: REST path templates and paths, the JSON/query transcoder, gRPC-Web
//! text and frame decoding, and credential headers. Each takes arbitrary bytes, must never
//! panic, and asserts what must hold for any input. The unit tests below run them over seeded
//! random inputs, so `cargo test` exercises them without libFuzzer.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Method};

use crate::{
    auth, deadline, frames,
    rest::{
        HttpBinding, http_bindings,
        routes::{Router, Template},
        transcode,
    },
    web, web_text,
};

/// Splits fuzz input into `n` byte strings at `0xff` bytes (which no UTF-8 text holds).
fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts: Vec<&[u8]> = data.splitn(n, |b| *b == 0xff).collect();
    parts.resize(n, b"");
    parts
}

fn bindings() -> &'static [HttpBinding] {
    static BINDINGS: OnceLock<Vec<HttpBinding>> = OnceLock::new();
    BINDINGS.get_or_init(|| {
        http_bindings(palisade_proto::descriptor_pool()).expect("the API's rules parse")
    })
}

fn api_router() -> &'static Router<usize> {
    static ROUTER: OnceLock<Router<usize>> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let mut router = Router::default();
        for (i, binding) in bindings().iter().enumerate() {
            router.add(binding.http_method.clone(), binding.template.clone(), i);
        }
        router
    })
}

/// A template and a path: parsing never panics; a match binds every variable of the template
/// once, or names one whose value does not decode; the OpenAPI rendering has one parameter
/// per wildcard. The path is also routed against the API's real routes, and a route found
/// there really matches.
pub fn route(data: &[u8]) {
    let parts = split(data, 2);
    let (Ok(template), Ok(path)) = (std::str::from_utf8(parts[0]), std::str::from_utf8(parts[1]))
    else {
        return;
    };
    if let Ok(template) = Template::parse(template) {
        let fields: Vec<&str> = template.fields().collect();
        match template.match_path(path) {
            Some(Ok(bound)) => {
                let names: Vec<&str> = bound.iter().map(|(name, _)| name.as_str()).collect();
                assert_eq!(names, fields, "every variable bound once, in order");
            }
            Some(Err(field)) => assert!(fields.contains(&field.as_str()), "a variable's field"),
            None => {}
        }
        let (rendered, parameters) = template.openapi_path();
        assert_eq!(
            rendered.matches('{').count(),
            parameters.len(),
            "one parameter per wildcard"
        );
    }
    for method in [Method::GET, Method::POST] {
        if let Ok((&i, found)) = api_router().find(&method, path) {
            let binding = &bindings()[i];
            assert_eq!(binding.http_method, method);
            assert_eq!(binding.template.matches(path), Some(found));
        }
    }
}

/// A query string and a body for each REST binding of the API: the transcoder never panics,
/// and what it accepts is a message that decodes. Also decodes the bytes as each response.
pub fn transcode(data: &[u8]) {
    let parts = split(data, 3);
    let (Ok(query), Ok(value)) = (std::str::from_utf8(parts[0]), std::str::from_utf8(parts[1]))
    else {
        return;
    };
    let body = parts[2];
    for binding in bindings() {
        let input = binding.method.input();
        let path: Vec<(String, String)> = binding
            .template
            .fields()
            .map(|field| (field.to_owned(), value.to_owned()))
            .collect();
        if let Ok(encoded) = transcode::request_message(
            &input,
            &binding.body,
            binding.implied_mask.as_ref(),
            &path,
            query,
            body,
        ) {
            prost_reflect::DynamicMessage::decode(input, encoded.as_slice())
                .expect("an accepted request is a valid message");
        }
        let response_field = binding.response_body.as_ref().map(|f| f.json_name());
        let _ = transcode::response_json(&binding.method.output(), body, response_field);
    }
}

/// gRPC-Web bodies: base64 text decoding and frame splitting never panic; a frame stream fed
/// in any chunking gives the same frames, and encoded frames decode to themselves.
pub fn grpc_web(data: &[u8]) {
    let _ = web::Mode::of(&String::from_utf8_lossy(data));
    let decoded = web_text::decode_text(data);
    let mut decoder = web_text::TextDecoder::default();
    let in_pieces = (data.chunks(3).map(|piece| decoder.push(piece)))
        .collect::<Option<Vec<_>>>()
        .and_then(|decoded| Some((decoded.concat(), decoder.finish()?)))
        .map(|(mut decoded, rest)| {
            decoded.extend(rest);
            decoded
        });
    assert_eq!(in_pieces, decoded, "text decodes the same in pieces");
    for bytes in [Some(data.to_vec()), decoded].into_iter().flatten() {
        let whole = frames_of(&[&bytes]);
        let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
        assert_eq!(frames_of(&chunks), whole, "chunking changes nothing");
        if let Ok(frames) = whole {
            for (flag, payload) in frames {
                let again = frames_of(&[&frames::encode(flag, &payload)]);
                assert_eq!(again, Ok(vec![(flag, payload)]));
            }
        }
    }
}

/// Every complete frame of `chunks`, or the size of one that is too large.
fn frames_of(chunks: &[&[u8]]) -> Result<Vec<(u8, bytes::Bytes)>, frames::TooLarge> {
    let mut decoder = frames::Decoder::default();
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(frame) = decoder.next_frame()? {
            out.push(frame);
        }
    }
    Ok(out)
}

/// `authorization`, `x-api-key` and `grpc-timeout` header values: the credential parser never
/// panics, and a key it returns came from the headers; a deadline read is written back no
/// shorter.
pub fn api_key_header(data: &[u8]) {
    let parts = split(data, 3);
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("authorization", parts[0]),
        ("x-api-key", parts[1]),
        (deadline::GRPC_TIMEOUT, parts[2]),
    ] {
        if value.is_empty() {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    if let Ok(Some(key)) = auth::presented_api_key(&headers) {
        let presented = headers
            .values()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains(key.as_str()));
        assert!(presented, "{key:?} is not from the headers");
    }
    if let Ok(Some(read)) = deadline::client_deadline(&headers) {
        let mut written = HeaderMap::new();
        written.insert(deadline::GRPC_TIMEOUT, deadline::header_value(read));
        let again = deadline::client_deadline(&written)
            .ok()
            .flatten()
            .expect("written deadlines parse");
        assert!(again >= read, "{read:?} was written as {again:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a fixed sequence, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Inputs built from `alphabet` pieces and random bytes, mutated from `seeds`.
    fn inputs(seeds: &[&[u8]], alphabet: &[&[u8]], count: usize) -> Vec<Vec<u8>> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut out: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
        for _ in 0..count {
            let mut input = if rng.below(2) == 0 {
                seeds[rng.below(seeds.len())].to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..rng.below(8) {
                let at = rng.below(input.len() + 1);
                match rng.below(4) {
                    0 if !input.is_empty() => {
                        let end = (at + rng.below(4)).min(input.len());
                        input.drain(at.min(end)..end);
                    }
                    1 => input.insert(at, rng.next() as u8),
                    _ => {
                        let piece = alphabet[rng.below(alphabet.len())];
                        input.splice(at..at, piece.iter().copied());
                    }
                }
            }
            out.push(input);
        }
        out
    }

    #[test]
    fn route_survives_generated_inputs() {
        let seeds: &[&[u8]] = &[
            b"/v1/{name=tenants/*}\xff/v1/tenants/acme",
            b"/v1/{parent=tenants/*}/auditEvents:export\xff/v1/tenants/a/auditEvents:export",
            b"/v1/{path=files/**}\xff/v1/files/a/b",
            b"/v1/{a.b}/x/{c}:verb\xff/v1/q/x/r:verb",
        ];
        let alphabet: &[&[u8]] = &[
            b"/", b"{", b"}", b"=", b"*", b"**", b":", b"%2F", b"%", b"tenants", b"\xff", b".",
        ];
        for input in inputs(seeds, alphabet, 20_000) {
            route(&input);
        }
    }

    #[test]
    fn transcode_survives_generated_inputs() {
        let seeds: &[&[u8]] = &[
            b"pageSize=10&filter=x\xfftenants/acme\xff{\"displayName\":\"A\"}",
            b"tenantId=a\xffx\xff{\"plan\":\"PLAN_STANDARD\",\"labels\":{\"a\":\"b\"}}",
            b"\xff\xff{\"key\":\"k\",\"events\":[{\"action\":\"a\",\"sequence\":\"1\"}]}",
            b"a.b=1&a=2\xff\xff[1,2]",
        ];
        let alphabet: &[&[u8]] = &[
            b"&",
            b"=",
            b"%",
            b"+",
            b".",
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b":",
            b",",
            b"null",
            b"true",
            b"1e999",
            b"-1",
            b"\"2026-01-01T00:00:00Z\"",
            b"\xff",
            b"\x08\x96\x01",
        ];
        for input in inputs(seeds, alphabet, 3_000) {
            transcode(&input);
        }
    }

    #[test]
    fn grpc_web_survives_generated_inputs() {
        let seeds: &[&[u8]] = &[
            b"\x00\x00\x00\x00\x02hi\x80\x00\x00\x00\x0egrpc-status: 0",
            b"AAAAAAJoaQ==gAAAAA5ncnBjLXN0YXR1czogMA==",
            b"\x00\xff\xff\xff\xff",
        ];
        let alphabet: &[&[u8]] = &[b"=", b"==", b"A", b"/", b"+", b"\x00", b"\x80", b" ", b"\n"];
        for input in inputs(seeds, alphabet, 20_000) {
            grpc_web(&input);
        }
    }

    #[test]
    fn api_key_header_survives_generated_inputs() {
        let seeds: &[&[u8]] = &[
            b"ApiKey pal_0123_abcd\xff",
            b"\xffpal_0123_abcd",
            b"Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln\xff",
            b"apikey  \xff ",
        ];
        let alphabet: &[&[u8]] = &[b" ", b".", b"ApiKey", b"Bearer", b"\t", b"\xff", b"\x80"];
        for input in inputs(seeds, alphabet, 20_000) {
            api_key_header(&input);
        }
    }
}
