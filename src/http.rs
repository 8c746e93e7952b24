//! The tiny HTTP/1.1 server behind every endpoint stampede serves (the sink's and the NLB
//! emulator's admin, the live Prometheus metrics), and the client the harness calls them with.
//!
//! One request per connection, bounded head, body and time, `Connection: close`. No
//! authentication: what it serves belongs on loopback or a private network.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 4 * 1024;
/// For the whole exchange on either side: reading the request, acting, answering.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_RESPONSE: usize = 64 * 1024;
/// Input read and dropped after answering, before closing.
const MAX_DRAIN: usize = 64 * 1024;

/// Serves HTTP/1.1 until
/// `shutdown` completes: one request per connection, read within bounds, answered by
/// `respond`, then closed without resetting the answer away; each exchange within
/// `REQUEST_TIMEOUT`.
pub(crate) async fn serve_http<F>(
    listener: TcpListener,
    respond: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(&Request) -> Vec<u8> + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let respond = respond.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, exchange(stream, &*respond))
                            .await;
                    });
                }
                // Out of descriptors, most likely (the sink and the emulator hold many): back
                // off, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
        }
    }
}

/// An answer: a status line, a body of one content type, `Connection: close`.
pub(crate) struct Response {
    status: &'static str,
    content_type: &'static str,
    allow: Option<&'static str>,
    body: String,
}

impl Response {
    /// A JSON answer; the body gets a final newline.
    pub(crate) fn json(status: &'static str, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            allow: None,
            body: body + "\n",
        }
    }

    /// An answer of any other content type, its body as given.
    pub(crate) fn text(status: &'static str, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            allow: None,
            body,
        }
    }

    /// Adds an `Allow` header (with 405).
    pub(crate) fn allow(self, methods: &'static str) -> Response {
        Response {
            allow: Some(methods),
            ..self
        }
    }

    pub(crate) fn error(status: &'static str, message: &str) -> Response {
        Response::json(status, serde_json::json!({ "error": message }).to_string())
    }

    pub(crate) fn not_allowed(allow: &'static str) -> Response {
        Response::error(
            "405 Method Not Allowed",
            &format!("this path takes {allow} only"),
        )
        .allow(allow)
    }

    /// The answer on the wire; `head_only` (a HEAD request) leaves the body out.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.encode(false)
    }

    pub(crate) fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

async fn exchange(
    mut stream: TcpStream,
    respond: &(dyn Fn(&Request) -> Vec<u8> + Send + Sync),
) -> std::io::Result<()> {
    let bytes = match read_request(&mut stream).await? {
        Ok(request) => respond(&request),
        Err(response) => response.bytes(),
    };
    stream.write_all(&bytes).await?;
    stream.shutdown().await?;
    // Closing with unread input (a body we refused) would reset the connection and could
    // discard our answer at the client: read on until it closes, within the request bound.
    let mut left = MAX_DRAIN;
    let mut buf = [0u8; 1024];
    while left > 0 {
        match stream.read(&mut buf).await? {
            0 => break,
            n => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) body: Vec<u8>,
}

/// Reads one request; `Err` in the inner result is the answer to a malformed one.
pub(crate) async fn read_request(
    stream: &mut TcpStream,
) -> std::io::Result<Result<Request, Response>> {
    let mut data = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if data.len() > MAX_HEAD {
            return Ok(Err(Response::error(
                "431 Request Header Fields Too Large",
                &format!("the request head is over {MAX_HEAD} bytes"),
            )));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Err(Response::error(
                "400 Bad Request",
                "incomplete request",
            )));
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(Err(Response::error("400 Bad Request", "bad request line")));
    };
    if !version.starts_with("HTTP/1.") {
        return Ok(Err(Response::error("400 Bad Request", "bad request line")));
    }
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) => content_length = Some(n),
                Err(_) => {
                    return Ok(Err(Response::error(
                        "400 Bad Request",
                        &format!("Content-Length: {value:?} is not a length"),
                    )));
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Ok(Err(Response::error(
                "411 Length Required",
                "send the body with a Content-Length, not chunked",
            )));
        }
    }
    let length = content_length.unwrap_or(0);
    if length > MAX_BODY {
        return Ok(Err(Response::error(
            "413 Content Too Large",
            &format!("the body is {length} bytes; at most {MAX_BODY}"),
        )));
    }
    let mut body = data.split_off(head_end);
    while body.len() < length {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Err(Response::error(
                "400 Bad Request",
                &format!(
                    "the body ended after {} of {length} bytes (Content-Length)",
                    body.len()
                ),
            )));
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(Ok(Request {
        method: method.to_string(),
        path,
        body,
    }))
}

/// Why a `call` got no 200 answer. Its text starts with the address; callers say whose
/// endpoint it is ("sink admin {e}", "nlb admin {e}").
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// No answer: cannot connect, send or read, or no answer in time.
    #[error("{addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    /// An answer other than 200, with the server's message.
    #[error("{addr}: {status}: {message}")]
    Refused {
        addr: SocketAddr,
        status: String,
        message: String,
    },
}

/// One request; returns the body of a 200 answer, or what went wrong.
pub(crate) async fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, CallError> {
    let exchange = async {
        let mut stream = TcpStream::connect(admin)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send: {e}"))?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))
        .and_then(|r| r)
        .map_err(|reason| CallError::Unreachable {
            addr: admin,
            reason,
        })?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or("");
    let code = status_line.split(' ').nth(1).unwrap_or("");
    if code == "200" {
        return Ok(body.trim_end().to_string());
    }
    // Error answers carry {"error": "..."}; show the message, or the raw body if not.
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    let status = status_line.split_once(' ').map_or(status_line, |(_, s)| s);
    Err(CallError::Refused {
        addr: admin,
        status: status.to_string(),
        message,
    })
}
