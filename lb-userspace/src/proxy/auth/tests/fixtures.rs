//! Test keys, token signing and a local IdP serving a JWKS the test can change.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const ISS: &str = "https://idp.test";
pub const AUD: &str = "api";

pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/proxy/auth/testdata")
        .join(name)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims that pass the default test rules (sub, iss, aud, exp in 10 minutes).
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iss": ISS, "aud": AUD, "exp": now() + 600 })
}

/// Signs `claims` with the private key of test key `key` (rsa1, rsa2, ec1, ed1).
pub fn sign(alg: Algorithm, kid: Option<&str>, key: &str, claims: &Value) -> String {
    let pem = std::fs::read(testdata(&format!("{key}.key.pem"))).unwrap();
    let enc = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &enc).unwrap()
}

pub fn rs256(kid: &str, claims: &Value) -> String {
    sign(Algorithm::RS256, Some(kid), kid, claims)
}

pub fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

/// The test JWKS with only the keys `kids`.
pub fn jwks_with(kids: &[&str]) -> String {
    let all: Value =
        serde_json::from_slice(&std::fs::read(testdata("jwks.json")).unwrap()).unwrap();
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}

/// What the local IdP answers.
#[derive(Clone)]
pub enum Reply {
    Jwks(String),
    Status(StatusCode),
    Garbage,
}

struct IdpState {
    reply: Mutex<Reply>,
    fetches: AtomicU64,
}

/// A JWKS endpoint on 127.0.0.1 (ephemeral port), stopped on drop.
pub struct Idp {
    pub url: String,
    state: Arc<IdpState>,
    stop: CancellationToken,
}

impl Idp {
    pub async fn start(reply: Reply) -> Self {
        let state = Arc::new(IdpState {
            reply: Mutex::new(reply),
            fetches: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .route("/jwks", axum::routing::get(serve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
                .unwrap();
        });
        Self { url, state, stop }
    }

    pub fn set(&self, reply: Reply) {
        *self.state.reply.lock().unwrap() = reply;
    }

    pub fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(State(s): State<Arc<IdpState>>) -> Response {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    let reply = s.reply.lock().unwrap().clone();
    match reply {
        Reply::Jwks(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Reply::Status(code) => code.into_response(),
        Reply::Garbage => "<html>Service Unavailable".into_response(),
    }
}

/// A file under the temp dir, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, content: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "lb-auth-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, content).unwrap();
        Self(path)
    }

    pub fn write(&self, content: &str) {
        std::fs::write(&self.0, content).unwrap();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Polls `cond` every 20 ms for at most 5 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}
