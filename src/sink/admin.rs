//! The sink's admin endpoint, so a profile phase or an operator can play a deploy on a running
//! sink: `POST /action` with one `SinkAction` as JSON, `GET /stats` for its state. And the
//! client both use.
//!
//! Served by `crate::http` (one request per connection, bounded head, body and time), JSON in
//! and out. It has no authentication:
//! whoever reaches it can close every connection, so it belongs on loopback or a private
//! network. It never touches a held connection itself; `SinkControl` does.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::SinkStats;
use super::control::{ControlError, SinkControl, SinkStatus};
use crate::http::{Request, Response, call, serve_http};
use crate::profile::sink_action::SinkAction;

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
    let text = call(admin, "POST", "/action", &body)
        .await
        .map_err(|e| format!("sink admin {e}"))?;
    parse_status(admin, &text)
}

/// Reads a sink's state from its admin endpoint (bounded time).
pub async fn admin_stats(admin: SocketAddr) -> Result<SinkStatus, String> {
    let text = call(admin, "GET", "/stats", "")
        .await
        .map_err(|e| format!("sink admin {e}"))?;
    parse_status(admin, &text)
}

fn parse_status(admin: SocketAddr, text: &str) -> Result<SinkStatus, String> {
    serde_json::from_str(text)
        .map_err(|e| format!("sink admin {admin}: unexpected answer ({e}): {text}"))
}
