//! The admin listener: metrics, status, and the built-in registry's HTTP API.
//!
//! Routes:
//! - `GET /metrics`: Prometheus text (see [`crate::metrics`]).
//! - `GET /v1/status`: [`Status`] as JSON (what `lb status` prints).
//! - `GET /v1/registry`: registered instances.
//! - `PUT /v1/registry/{service}/{address}/{port}`: register or replace an instance; body
//!   (optional) `{"weight": 1, "ttl": 30, "metadata": {"k": "v"}}`.
//! - `POST /v1/registry/{service}/{address}/{port}/heartbeat`: renew its TTL.
//! - `DELETE /v1/registry/{service}/{address}/{port}`: deregister.
//! - `GET /healthz`: `ok`.
//!
//! Registry writes need `Authorization: Bearer TOKEN` (the token from `[admin] token_file`);
//! with no token file they are refused. The listener binds to loopback or a unix socket
//! unless the config explicitly allows otherwise.
//!
//! The admin part of the agent: [`start`] runs the listener and the registry's TTL reaper
//! until its stop token is cancelled. It reads the other parts only through
//! [`StatusSource`] and writes only the built-in registry (which reports to the control
//! plane like any source).
//!
//! May depend on: `config`, `registry` (the built-in registry), `status`, `metrics`. Not on
//! the parts' internals (`control`, `l4`, `dataplane`).

pub mod client;

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{Admin, AdminListen},
    metrics,
    registry::builtin::{InstanceId, RegisterRequest, Registry, RegistryError},
    status::{Status, StatusSource},
};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin listener {listen}: {source}")]
    Bind {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error("admin listener {0}: another process is serving on that socket")]
    InUse(String),
    #[error("reading the admin token from {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token file {0} is empty")]
    EmptyToken(PathBuf),
}

/// The shared state of every handler.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Mutex<Registry>>,
    /// `None`: registry writes are refused.
    pub token: Option<Arc<str>>,
    /// The running parts, for `/v1/status` and `/metrics`.
    pub status: StatusSource,
}

/// Binds `[admin] listen` (and reads the token file), then serves the API and expires
/// registrations until `stop` is cancelled. Errors only before serving.
pub async fn start(
    config: &Admin,
    registry: Arc<Mutex<Registry>>,
    status: StatusSource,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, AdminError> {
    let token = config.token_file.as_deref().map(read_token).transpose()?;
    let listener = Listener::bind(&config.listen).await?;
    let state = AdminState {
        registry: registry.clone(),
        token,
        status,
    };
    Ok(tokio::spawn(async move {
        tokio::join!(serve(listener, state, stop.clone()), reap(registry, stop));
    }))
}

/// Reads the token file: its first line, trimmed.
pub fn read_token(path: &std::path::Path) -> Result<Arc<str>, AdminError> {
    let text = std::fs::read_to_string(path).map_err(|source| AdminError::Token {
        path: path.into(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(AdminError::EmptyToken(path.into()));
    }
    Ok(token.into())
}

/// A bound admin listener.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    /// The socket file is removed when the listener goes.
    Unix(tokio::net::UnixListener, SocketFile),
}

impl Listener {
    pub async fn bind(listen: &AdminListen) -> Result<Self, AdminError> {
        let bind_err = |source| AdminError::Bind {
            listen: listen.to_string(),
            source,
        };
        match listen {
            AdminListen::Tcp(addr) => Ok(Listener::Tcp(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(bind_err)?,
            )),
            AdminListen::Unix(path) => {
                // A socket file left by a killed agent is stale; one that answers is not.
                if tokio::net::UnixStream::connect(path).await.is_ok() {
                    return Err(AdminError::InUse(listen.to_string()));
                }
                let _ = std::fs::remove_file(path);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(bind_err)?;
                }
                let l = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
                Ok(Listener::Unix(l, SocketFile(path.clone())))
            }
        }
    }
}

/// How long a stopping listener waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(2);

/// Serves the admin API until `stop` is cancelled (requests in flight get [`DRAIN`]).
pub async fn serve(listener: Listener, state: AdminState, stop: CancellationToken) {
    let app = router(state);
    let stopped = stop.clone().cancelled_owned();
    let serving = async {
        match listener {
            Listener::Tcp(l) => axum::serve(l, app).with_graceful_shutdown(stopped).await,
            Listener::Unix(l, _cleanup) => {
                axum::serve(l, app).with_graceful_shutdown(stopped).await
            }
        }
    };
    let drained = async {
        stop.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    let result = tokio::select! {
        r = serving => r,
        () = drained => Ok(()),
    };
    if let Err(e) = result {
        warn!(error = %e, "admin listener stopped");
    }
}

/// Removes a unix socket file when dropped.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_handler))
        .route("/v1/status", get(status_handler))
        .route("/v1/registry", get(list_handler))
        .route(
            "/v1/registry/{service}/{address}/{port}",
            put(register_handler).delete(deregister_handler),
        )
        .route(
            "/v1/registry/{service}/{address}/{port}/heartbeat",
            post(heartbeat_handler),
        )
        .with_state(state)
}

/// An API error: status code and a JSON `{"error": "..."}` body.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let code = match e {
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Persist { .. } | RegistryError::Load { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(code, e.to_string())
    }
}

async fn ask_status(state: &AdminState) -> Result<Status, ApiError> {
    let unavailable = || {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is not answering".into(),
        )
    };
    tokio::time::timeout(Duration::from_secs(10), state.status.get())
        .await
        .map_err(|_| unavailable())?
        .ok_or_else(unavailable)
}

async fn metrics_handler(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let status = ask_status(&state).await?;
    Ok((
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&status, state.status.gateway().map(|g| g.metrics())),
    )
        .into_response())
}

async fn status_handler(State(state): State<AdminState>) -> Result<Json<Status>, ApiError> {
    Ok(Json(ask_status(&state).await?))
}

/// Runs a registry operation on the blocking pool: writes fsync the state file while
/// holding the registry's lock, and neither they nor a read or heartbeat waiting for that
/// lock may stall the agent's loop (one thread).
async fn with_registry<T: Send + 'static>(
    state: &AdminState,
    op: impl FnOnce(&mut Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    let registry = state.registry.clone();
    let done = tokio::task::spawn_blocking(move || {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        op(&mut registry.lock().unwrap_or_else(|p| p.into_inner()))
    })
    .await
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("registry write: {e}"),
        )
    })?;
    Ok(done?)
}

async fn list_handler(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let instances = with_registry(&state, |r| Ok(r.list())).await?;
    Ok(Json(serde_json::json!({ "instances": instances })).into_response())
}

/// Writes need the bearer token; compare in constant time.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "registry writes are disabled: set [admin] token_file".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let equal = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if equal {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        ))
    }
}

/// A registry write's instance, once the caller is authorized.
fn authorized_id(
    state: &AdminState,
    headers: &HeaderMap,
    path: (String, String, String),
) -> Result<InstanceId, ApiError> {
    authorize(state, headers)?;
    instance_id(path)
}

fn instance_id((service, address, port): (String, String, String)) -> Result<InstanceId, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let address: IpAddr = address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| bad(format!("invalid IP address `{address}`")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad(format!("invalid port `{port}`")))?;
    Ok(InstanceId {
        service,
        address,
        port,
    })
}

async fn register_handler(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = authorized_id(&state, &headers, path)?;
    let req: RegisterRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RegisterRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("request body: {e}")))?
    };
    let registered = id.clone();
    let instance = with_registry(&state, move |r| r.register(registered, req)).await?;
    info!(instance = %id, weight = instance.weight, ttl = instance.ttl, "registry: registered");
    Ok(Json(instance).into_response())
}

async fn heartbeat_handler(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let id = authorized_id(&state, &headers, path)?;
    let instance = with_registry(&state, move |r| r.heartbeat(&id)).await?;
    Ok(Json(instance).into_response())
}

async fn deregister_handler(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let id = authorized_id(&state, &headers, path)?;
    let deregistered = id.clone();
    with_registry(&state, move |r| r.deregister(&deregistered)).await?;
    info!(instance = %id, "registry: deregistered");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Expires registrations whose TTL ran out, four times a second, until `stop` is cancelled.
pub async fn reap(registry: Arc<Mutex<Registry>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Expiring writes the state file: off the agent's thread, like the API's writes.
        let registry = registry.clone();
        let expired = tokio::task::spawn_blocking(move || {
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .expire(std::time::Instant::now())
        })
        .await;
        let Ok(gone) = expired else {
            continue;
        };
        for id in gone {
            warn!(instance = %id, "registry: TTL expired without heartbeat, removed");
        }
    }
}
