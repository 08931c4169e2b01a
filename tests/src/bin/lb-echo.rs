//! `lb-echo --listen ADDR:PORT --name NAME`: the HTTP backend of the gateway tests.
//!
//! Speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port. Every answer is JSON
//! `{"backend", "method", "path", "version", "headers", "body_len"}` describing the request
//! as it arrived (so tests see what the gateway forwarded), except:
//! - `/status/<code>` answers with that status (same JSON body);
//! - `/grpc` answers `content-type: application/grpc`, a body, and the trailers
//!   `grpc-status: 0`, `grpc-message: ok` (gRPC's shape, without protobuf);
//! - `/healthz` answers 200 `ok`.
//!
//! Misbehaviour on request, for the failure-handling tests: header
//! `x-echo-misbehave: NAMES:ACTIONS[;NAMES:ACTIONS...]`, where NAMES is `*` or backend names
//! joined by `,`, and ACTIONS (joined by `,`) are `delay=MS` (wait before answering), a status
//! code (answer it), or `reset` (close the connection without an answer). Only the backends
//! named act on it; the others answer normally.
//!
//! Each request is also logged as one line `REQ METHOD PATH id=X-REQUEST-ID` on stdout once
//! its body is read (`BAD ...` if the body broke off), so a test can count what reached the
//! backend.
//! Runs until killed.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::io::Write;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Name echoed as `backend`.
    #[arg(long)]
    name: String,
}

type Body = BoxBody<Bytes, Infallible>;

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    println!("lb-echo {} listening on {}", args.name, args.listen);
    let name: Arc<str> = args.name.into();
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(name.clone(), req));
            // Errors are a client's business (reset, garbage): the tests count requests instead.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// What `x-echo-misbehave` asks of backend `name`: (delay ms, status, reset).
fn misbehaviour(name: &str, h: &HeaderMap) -> (u64, Option<StatusCode>, bool) {
    let mut out = (0, None, false);
    let Some(spec) = h.get("x-echo-misbehave").and_then(|v| v.to_str().ok()) else {
        return out;
    };
    for part in spec.split(';') {
        let Some((names, actions)) = part.trim().split_once(':') else {
            continue;
        };
        if names != "*" && !names.split(',').any(|n| n.trim() == name) {
            continue;
        }
        for a in actions.split(',').map(str::trim) {
            if let Some(ms) = a.strip_prefix("delay=") {
                out.0 = ms.parse().unwrap_or(0);
            } else if a == "reset" {
                out.2 = true;
            } else if let Some(code) = a
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                out.1 = Some(code);
            }
        }
    }
    out
}

/// Returned to hyper to have it close the connection without an answer.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset on request")
    }
}

impl std::error::Error for Reset {}

async fn handle(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Body>, Reset> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    // Logged once the body is in: `REQ` for a complete request, `BAD` for one whose body
    // broke off (the head reached the backend, the request did not).
    let (tag, body_len) = match body.collect().await {
        Ok(b) => ("REQ", b.to_bytes().len()),
        Err(_) => ("BAD", 0),
    };
    {
        let id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{tag} {} {} id={id}", parts.method, path);
        let _ = out.flush();
    }
    let (delay, forced, reset) = misbehaviour(&name, &parts.headers);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if reset {
        return Err(Reset);
    }

    if parts.uri.path() == "/healthz" {
        return Ok(text(StatusCode::OK, "ok\n"));
    }
    let mut headers = BTreeMap::<String, String>::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_owned())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let json = serde_json::json!({
        "backend": &*name,
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
    })
    .to_string();

    if parts.uri.path() == "/grpc" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let body = DataThenTrailers {
            data: Some(Bytes::from(json)),
            trailers: Some(trailers),
        };
        let mut resp = Response::new(body.boxed());
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        return Ok(resp);
    }
    let status = parts
        .uri
        .path()
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .or(forced)
        .unwrap_or(StatusCode::OK);
    let mut resp = Response::new(Full::new(Bytes::from(json)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// A body of one data frame and then trailers. Its size is not announced: with an exact
/// size (e.g. `Full::with_trailers`) hyper ends the HTTP/2 stream after the data and the
/// trailers are never sent.
struct DataThenTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for DataThenTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = match (this.data.take(), this.trailers.take()) {
            (Some(d), t) => {
                this.trailers = t;
                Frame::data(d)
            }
            (None, Some(t)) => Frame::trailers(t),
            (None, None) => return Poll::Ready(None),
        };
        Poll::Ready(Some(Ok(frame)))
    }
}

fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(s.as_bytes())).boxed());
    *resp.status_mut() = status;
    resp
}
