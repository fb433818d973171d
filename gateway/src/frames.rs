//! gRPC's length-prefixed message framing (1 flag byte, 4 length bytes, payload), shared by the
//! REST transcoder and gRPC-Web. Pure functions over bytes, so they can be fuzzed.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The flag of a gRPC-Web frame that carries trailers instead of a message.
pub const TRAILERS_FLAG: u8 = 0x80;
/// The flag bit of a compressed message.
pub const COMPRESSED_FLAG: u8 = 0x01;
/// The largest message accepted, as tonic's default decoding limit: a peer cannot make the
/// gateway buffer more than this for one frame.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// A frame's prefix: the flag byte, then the payload's length in 4 bytes.
pub const HEADER: usize = 5;

/// The payload length a frame's prefix declares.
pub fn declared_length(prefix: &[u8; HEADER]) -> usize {
    u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize
}

/// One frame with `flag` around `payload`.
pub fn encode(flag: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + payload.len());
    out.put_u8(flag);
    out.put_u32(u32::try_from(payload.len()).expect("frames are smaller than 4 GiB"));
    out.put_slice(payload);
    out.freeze()
}

#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge(pub usize);

/// Splits a byte stream, fed in arbitrary chunks, into frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete frame as `(flag, payload)`, or `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Bytes)>, TooLarge> {
        if self.buffer.len() < HEADER {
            return Ok(None);
        }
        let prefix: &[u8; HEADER] = self.buffer[..HEADER].try_into().expect("HEADER bytes");
        let (flag, length) = (prefix[0], declared_length(prefix));
        if length > MAX_MESSAGE {
            return Err(TooLarge(length));
        }
        if self.buffer.len() < HEADER + length {
            return Ok(None);
        }
        self.buffer.advance(HEADER);
        Ok(Some((flag, self.buffer.split_to(length).freeze())))
    }

    /// Whether bytes of an unfinished frame remain (a truncated stream).
    pub fn has_partial(&self) -> bool {
        !self.buffer.is_empty()
    }
}

/// gRPC-Web's trailers frame payload: `name: value\r\n` lines, names lowercase.
pub fn encode_trailers(trailers: &http::HeaderMap) -> Bytes {
    let mut out = BytesMut::new();
    for (name, value) in trailers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_are_reassembled() {
        let mut wire = encode(0, b"hello").to_vec();
        wire.extend_from_slice(&encode(TRAILERS_FLAG, b"grpc-status: 0\r\n"));
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        for byte in wire {
            decoder.push(&[byte]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(
            frames,
            vec![
                (0, Bytes::from_static(b"hello")),
                (TRAILERS_FLAG, Bytes::from_static(b"grpc-status: 0\r\n"))
            ]
        );
        assert!(!decoder.has_partial());
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut decoder = Decoder::default();
        decoder.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(decoder.next_frame(), Err(TooLarge(u32::MAX as usize)));
    }
}
