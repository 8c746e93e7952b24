//! The sink's admin endpoint, so a profile phase or an operator can play a deploy on a running
//! sink: `POST /action` with one `SinkAction` as JSON, `GET /stats` for its state. And the
//! client both use.
//!
//! A deliberately tiny HTTP/1.1 server, like the metrics endpoint: one request per connection,
//! bounded head, body and time, `Connection: close`, JSON in and out. It has no authentication:
//! whoever reaches it can close every connection, so it belongs on loopback or a private
//! network. It never touches a held connection itself; `SinkControl` does.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::SinkStats;
use super::action::SinkAction;
use super::control::{ControlError, SinkControl, SinkStatus};

const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 4 * 1024;
/// For the whole exchange on either side: reading the request, acting, answering.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_RESPONSE: usize = 64 * 1024;
/// Input read and dropped after answering, before closing.
const MAX_DRAIN: usize = 64 * 1024;

/// Serves the admin endpoint until `shutdown` completes: `POST /action` with a JSON body of one
/// `SinkAction` (e.g. `{"action":"close_fraction","fraction":0.5}`), answered with the state
/// after it; `GET /stats` with the state (`SinkStatus` as JSON). 200 on success, 400 naming the
/// field on a bad body, 404 or 405 for other paths or methods, 500 if listening again failed.
pub async fn serve_admin(
    listener: TcpListener,
    control: Arc<SinkControl>,
    stats: Arc<SinkStats>,
    shutdown: impl Future<Output = ()>,
) {
    let respond = move |request: &Request| respond(request, &control, &stats).bytes();
    serve_http(listener, respond, shutdown).await;
}

/// The tiny HTTP/1.1 server behind the sink's and the NLB emulator's admin endpoints, until
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

pub(crate) struct Response {
    status: &'static str,
    allow: Option<&'static str>,
    body: String,
}

impl Response {
    pub(crate) fn json(status: &'static str, body: String) -> Response {
        Response {
            status,
            allow: None,
            body,
        }
    }

    pub(crate) fn error(status: &'static str, message: &str) -> Response {
        Response::json(status, serde_json::json!({ "error": message }).to_string())
    }

    pub(crate) fn not_allowed(allow: &'static str) -> Response {
        Response {
            allow: Some(allow),
            ..Response::error(
                "405 Method Not Allowed",
                &format!("this path takes {allow} only"),
            )
        }
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.body.len() + 1
        );
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes.push(b'\n');
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

fn respond(request: &Request, control: &SinkControl, stats: &SinkStats) -> Response {
    let status = |control: &SinkControl| {
        let status = control.status(stats);
        Response::json(
            "200 OK",
            serde_json::to_string(&status).unwrap_or_else(|_| "{}".into()),
        )
    };
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/action") => match SinkAction::from_json(&request.body) {
            Ok(action) => match control.try_apply(&action) {
                Ok(()) => status(control),
                Err(e @ ControlError::Invalid(_)) => {
                    Response::error("400 Bad Request", &e.to_string())
                }
                Err(e) => Response::error("500 Internal Server Error", &e.to_string()),
            },
            Err(message) => Response::error("400 Bad Request", &message),
        },
        ("GET", "/stats") => status(control),
        (_, "/action") => Response::not_allowed("POST"),
        (_, "/stats") => Response::not_allowed("GET"),
        _ => Response::error(
            "404 Not Found",
            "the sink admin serves POST /action and GET /stats",
        ),
    }
}

/// Sends one action to a sink's admin endpoint (bounded time), for profiles and the CLI.
pub async fn admin_request(admin: SocketAddr, action: &SinkAction) -> Result<(), String> {
    admin_apply(admin, action).await.map(drop)
}

/// Sends one action to a sink's admin endpoint; returns the sink's state after it.
pub async fn admin_apply(admin: SocketAddr, action: &SinkAction) -> Result<SinkStatus, String> {
    let body = serde_json::to_string(action).map_err(|e| format!("sink admin {admin}: {e}"))?;
    let text = call(admin, "POST", "/action", &body).await?;
    parse_status(admin, &text)
}

/// Reads a sink's state from its admin endpoint (bounded time).
pub async fn admin_stats(admin: SocketAddr) -> Result<SinkStatus, String> {
    let text = call(admin, "GET", "/stats", "").await?;
    parse_status(admin, &text)
}

fn parse_status(admin: SocketAddr, text: &str) -> Result<SinkStatus, String> {
    serde_json::from_str(text)
        .map_err(|e| format!("sink admin {admin}: unexpected answer ({e}): {text}"))
}

/// One request; returns the body of a 200 answer, or what went wrong.
pub(crate) async fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, String> {
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
        .map_err(|e| format!("sink admin {admin}: {e}"))?;
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
    Err(format!("sink admin {admin}: {status}: {message}"))
}
