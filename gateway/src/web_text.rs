//! gRPC-Web text mode's request body: base64 as grpc-web clients send it (possibly several
//! padded chunks one after another, whitespace ignored), decoded as it arrives. Whatever the
//! chunking, the decoder keeps at most a quantum of text undecoded, so a body costs its
//! decoded bytes and nothing more.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tonic::Status;

/// Padding is optional: a chunk's last quantum may come with or without it.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The most text a valid body leaves undecoded between chunks: one quantum.
const MOST_PENDING: usize = 4;

/// Decodes base64 text handed to it piece by piece.
#[derive(Debug, Default)]
pub struct TextDecoder {
    /// Text not decoded yet: less than a quantum, or a quantum whose padding may go on.
    pending: Vec<u8>,
}

impl TextDecoder {
    /// The bytes `text` completes, or `None` if it cannot be base64.
    pub fn push(&mut self, text: &[u8]) -> Option<Vec<u8>> {
        let text = text.iter().copied().filter(|b| !b.is_ascii_whitespace());
        self.pending.extend(text);
        let mut out = Vec::with_capacity(self.pending.len() / 4 * 3);
        let mut start = 0;
        for i in 0..self.pending.len() {
            // A run of `=` ends one chunk, once the next character shows the run is over.
            let next = self.pending.get(i + 1);
            if self.pending[i] == b'=' && next.is_some_and(|next| *next != b'=') {
                LENIENT
                    .decode_vec(&self.pending[start..=i], &mut out)
                    .ok()?;
                start = i + 1;
            }
        }
        // Whole quanta before any padding decode now; the rest waits for more text.
        let rest = &self.pending[start..];
        let unpadded = rest.iter().position(|b| *b == b'=').unwrap_or(rest.len());
        let decodable = start + unpadded / 4 * 4;
        LENIENT
            .decode_vec(&self.pending[start..decodable], &mut out)
            .ok()?;
        self.pending.drain(..decodable);
        (self.pending.len() <= MOST_PENDING).then_some(out)
    }

    /// The bytes of what is left once the text has ended, or `None` if it is not base64.
    pub fn finish(self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        LENIENT.decode_vec(&self.pending, &mut out).ok()?;
        Some(out)
    }
}

/// All of `text` decoded at once (the fuzz target's reference).
pub fn decode_text(text: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = TextDecoder::default();
    let mut out = decoder.push(text)?;
    out.extend(decoder.finish()?);
    Some(out)
}

/// A text-mode request body, decoded: the binary frames it stands for.
pub struct TextDecoded<B> {
    text: Pin<Box<B>>,
    /// `None` once the text has ended.
    decoder: Option<TextDecoder>,
}

impl<B> TextDecoded<B> {
    pub fn new(text: B) -> TextDecoded<B> {
        TextDecoded {
            text: Box::pin(text),
            decoder: Some(TextDecoder::default()),
        }
    }
}

fn not_base64() -> Status {
    Status::invalid_argument("the body is not base64")
}

impl<B> HttpBody for TextDecoded<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            let Some(decoder) = this.decoder.as_mut() else {
                return Poll::Ready(None);
            };
            let decoded = match ready!(this.text.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(text) => decoder.push(&text),
                    // A gRPC-Web request has no trailers.
                    Err(_) => continue,
                },
                Some(Err(error)) => {
                    let error = error.into();
                    let message = format!("reading the request failed: {error}");
                    return Poll::Ready(Some(Err(Status::cancelled(message))));
                }
                None => this.decoder.take().and_then(TextDecoder::finish),
            };
            match decoded {
                None => {
                    this.decoder = None;
                    return Poll::Ready(Some(Err(not_base64())));
                }
                Some(bytes) if bytes.is_empty() => {}
                Some(bytes) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(bytes))))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_none()
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[test]
    fn text_bodies_may_be_several_padded_chunks() {
        let joined = format!("{}{}", STANDARD.encode(b"ab"), STANDARD.encode(b"cde"));
        assert_eq!(decode_text(joined.as_bytes()).unwrap(), b"abcde");
        let joined = format!("{}{}", STANDARD.encode(b"a"), STANDARD.encode(b"xyz"));
        assert_eq!(decode_text(joined.as_bytes()).unwrap(), b"axyz");
        assert_eq!(decode_text(b"").unwrap(), b"");
        assert_eq!(decode_text(b" YW Jj\r\n").unwrap(), b"abc");
        assert!(decode_text(b"!!!!").is_none());
    }

    #[test]
    fn any_split_of_the_text_decodes_the_same() {
        let text = format!(
            "{} {}{}",
            STANDARD.encode(b"hello"),
            STANDARD.encode(b"a"),
            STANDARD.encode(b"world!")
        );
        let text = text.as_bytes();
        for first in 0..=text.len() {
            for second in first..=text.len() {
                let mut decoder = TextDecoder::default();
                let mut out = Vec::new();
                for piece in [&text[..first], &text[first..second], &text[second..]] {
                    out.extend(decoder.push(piece).unwrap());
                    assert!(decoder.pending.len() <= MOST_PENDING);
                }
                out.extend(decoder.finish().unwrap());
                assert_eq!(out, b"helloaworld!", "split at {first} and {second}");
            }
        }
    }

    #[test]
    fn endless_padding_is_refused_as_it_arrives() {
        let mut decoder = TextDecoder::default();
        assert!(decoder.push(b"YQ").is_some());
        assert!(decoder.push(b"==").is_some());
        assert!(decoder.push(b"=").is_none(), "not base64, and not kept");
    }

    #[tokio::test]
    async fn a_body_is_decoded_as_it_arrives() {
        let pieces = ["AAAA", "AAV", "oZWxsbw", "=="];
        let frames =
            pieces.map(|piece| Ok::<_, Status>(Frame::data(Bytes::from_static(piece.as_bytes()))));
        let body = StreamBody::new(futures::stream::iter(frames));
        let decoded = TextDecoded::new(body).collect().await.unwrap().to_bytes();
        assert_eq!(&decoded[..], b"\0\0\0\0\x05hello");

        let bad = futures::stream::iter([Ok::<_, Status>(Frame::data(Bytes::from("AA!A")))]);
        let refused = TextDecoded::new(StreamBody::new(bad)).collect().await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
