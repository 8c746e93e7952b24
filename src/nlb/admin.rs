//! The emulator's admin endpoint, for operators and for profile phases: `GET /metrics`
//! (Prometheus text), `GET /metrics.json`, `POST /targets/ADDR/deregister` and
//! `POST /targets/ADDR/register`. And the client the harness uses.
//!
//! Served by stampede's tiny HTTP/1.1 server (`crate::http`: one request per
//! connection, bounded head, body and time); no authentication, so keep it on loopback or a
//! private network.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::{Balancer, NlbMetrics, TargetError};
use crate::http::{Request, Response, call, serve_http};
use crate::profile::TargetChange;

/// Serves the admin endpoint until `shutdown` completes.
pub async fn serve_admin(
    listener: TcpListener,
    nlb: Arc<dyn Balancer>,
    shutdown: impl Future<Output = ()>,
) {
    serve_http(
        listener,
        move |request: &Request| respond(request, &nlb),
        shutdown,
    )
    .await;
}

fn respond(request: &Request, nlb: &Arc<dyn Balancer>) -> Vec<u8> {
    let path = request.path.as_str();
    if path == "/metrics" {
        if request.method != "GET" {
            return Response::not_allowed("GET").bytes();
        }
        let body = nlb.metrics().prometheus();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            body.len()
        );
        return [head.into_bytes(), body.into_bytes()].concat();
    }
    if path == "/metrics.json" {
        if request.method != "GET" {
            return Response::not_allowed("GET").bytes();
        }
        let json = serde_json::to_string(&nlb.metrics()).unwrap_or_else(|_| "{}".into());
        return Response::json("200 OK", json).bytes();
    }
    let change = path.strip_prefix("/targets/").and_then(|rest| {
        let (addr, verb) = rest.rsplit_once('/')?;
        let change = match verb {
            "register" => TargetChange::Register,
            "deregister" => TargetChange::Deregister,
            _ => return None,
        };
        Some((addr, change))
    });
    let Some((addr, change)) = change else {
        return Response::error(
            "404 Not Found",
            "the nlb admin serves GET /metrics, GET /metrics.json, \
             POST /targets/ADDR/register and POST /targets/ADDR/deregister",
        )
        .bytes();
    };
    if request.method != "POST" {
        return Response::not_allowed("POST").bytes();
    }
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return Response::error(
            "400 Bad Request",
            &format!("{addr:?} is not a target address; expected IP:PORT (e.g. 127.0.0.1:7000)"),
        )
        .bytes();
    };
    let done = match change {
        TargetChange::Register => nlb.clone().register_target(addr),
        TargetChange::Deregister => nlb.clone().deregister_target(addr),
    };
    match done {
        Ok(()) => {
            let json = serde_json::to_string(&nlb.metrics()).unwrap_or_else(|_| "{}".into());
            Response::json("200 OK", json).bytes()
        }
        Err(e @ TargetError::Unknown { .. }) => {
            Response::error("404 Not Found", &e.to_string()).bytes()
        }
        Err(e @ TargetError::Datapath(_)) => {
            Response::error("500 Internal Server Error", &e.to_string()).bytes()
        }
    }
}

/// Reads an emulator's counters from its admin endpoint (bounded time).
pub async fn admin_metrics(admin: SocketAddr) -> Result<NlbMetrics, String> {
    let text = call(admin, "GET", "/metrics.json", "")
        .await
        .map_err(|e| format!("nlb admin {e}"))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("nlb admin {admin}: unexpected answer ({e}): {text}"))
}

/// Registers or deregisters `target` at an emulator's admin endpoint (bounded time).
pub async fn admin_target(
    admin: SocketAddr,
    target: SocketAddr,
    change: TargetChange,
) -> Result<(), String> {
    let path = format!("/targets/{target}/{}", change.verb());
    call(admin, "POST", &path, "")
        .await
        .map(drop)
        .map_err(|e| format!("nlb admin {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datapath that knows one target and cannot apply any change to it.
    struct Broken;

    impl Balancer for Broken {
        fn metrics(&self) -> NlbMetrics {
            NlbMetrics {
                nodes: Vec::new(),
                targets: Vec::new(),
                total: Default::default(),
            }
        }
        fn register_target(self: Arc<Self>, addr: SocketAddr) -> Result<(), TargetError> {
            self.deregister_target(addr)
        }
        fn deregister_target(self: Arc<Self>, addr: SocketAddr) -> Result<(), TargetError> {
            if addr.port() == 7000 {
                Err(TargetError::Datapath("nft: cannot apply".into()))
            } else {
                Err(TargetError::unknown(
                    addr,
                    ["127.0.0.1:7000".parse().unwrap()],
                ))
            }
        }
    }

    fn status(path: &str) -> String {
        let request = Request {
            method: "POST".into(),
            path: path.into(),
            body: Vec::new(),
        };
        let nlb: Arc<dyn Balancer> = Arc::new(Broken);
        let answer = String::from_utf8(respond(&request, &nlb)).unwrap();
        answer.lines().next().unwrap_or("").to_string()
    }

    #[test]
    fn an_unknown_target_is_404_and_a_failed_datapath_500() {
        assert_eq!(
            status("/targets/127.0.0.1:7001/deregister"),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status("/targets/127.0.0.1:7000/deregister"),
            "HTTP/1.1 500 Internal Server Error"
        );
        assert_eq!(
            status("/targets/127.0.0.1:7000/register"),
            "HTTP/1.1 500 Internal Server Error"
        );
    }
}
