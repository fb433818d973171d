//! Plain HTTP/1.1 over a fresh connection, as curl would speak it: admin endpoints, REST and
//! gRPC-Web requests, and answers a server gives before it has read the whole request.

use anyhow::Context;

/// A minimal HTTP/1.1 GET (admin endpoints are plain HTTP): (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let response = http_request(addr, "GET", path, &[], b"").await?;
    Ok((response.status, response.text()))
}

/// An HTTP/1.1 response as [`http_request`] read it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Names lowercase, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 request over a fresh connection (REST, gRPC-Web): any method, extra
/// headers (a `host` among them replaces the address), a body; the whole response is read (`Connection: close`), chunked bodies decoded.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    use std::fmt::Write as _;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    // `Host` is the address unless the test names another (host-based routing).
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        write!(head, "Host: {addr}\r\n")?;
    }
    for (name, value) in headers {
        write!(head, "{name}: {value}\r\n")?;
    }
    write!(head, "Content-Length: {}\r\n\r\n", body.len())?;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(head.as_bytes()).await?;
    // A server may answer before it has read the whole body (a 413) and close: its answer is
    // read then, as curl reads it, rather than the request failing on the write.
    let cut_short = |error: &std::io::Error| {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        matches!(error.kind(), BrokenPipe | ConnectionReset)
    };
    if let Err(error) = stream.write_all(body).await
        && !cut_short(&error)
    {
        return Err(error.into());
    }
    let mut raw = Vec::new();
    // A reset after some of the answer arrived keeps what arrived.
    if let Err(error) = stream.read_to_end(&mut raw).await
        && (raw.is_empty() || !cut_short(&error))
    {
        return Err(error.into());
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8(raw[..end].to_vec())?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .context("no status")?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk_bytes(&body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk_bytes(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("no chunk size line")?;
        let size = std::str::from_utf8(&body[..line_end])?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(body.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}
