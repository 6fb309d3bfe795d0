//! An HTTP proxy in front of a test registry that counts the requests it forwards and can
//! cut blob responses short, to test what a client does when an upstream transfer breaks
//! (the linuxkit seed) and how often an upstream was asked for something.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::Response;
use futures::StreamExt as _;

struct ProxyState {
    target: String,
    http: reqwest::Client,
    /// Cut every blob GET response after this many body bytes.
    cut_blobs_after: Mutex<Option<usize>>,
    /// Hold every blob GET this long before forwarding it (a slow upstream).
    delay_blobs: Mutex<Option<std::time::Duration>>,
    /// Forwarded requests by (method, path).
    counts: Mutex<BTreeMap<(String, String), usize>>,
}

/// A running proxy; stopped when dropped.
pub struct CutProxy {
    addr: std::net::SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Starts a proxy to `target` (`http://host:port`) on a free loopback port, in the
    /// current tokio runtime.
    pub async fn start(target: &str) -> Self {
        // reqwest built without a bundled TLS provider panics unless one is installed.
        kiln::tls::install_crypto_provider();
        let state = Arc::new(ProxyState {
            target: target.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy HTTP client"),
            cut_blobs_after: Mutex::new(None),
            delay_blobs: Mutex::new(None),
            counts: Mutex::new(BTreeMap::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, blob GET responses end with an error after `bytes` body bytes (`None`:
    /// forward them whole).
    pub fn cut_blobs_after(&self, bytes: Option<usize>) {
        *self.state.cut_blobs_after.lock().unwrap() = bytes;
    }

    /// From now on, blob GETs wait `delay` before they are forwarded (`None`: at once), so
    /// that concurrent clients overlap.
    pub fn delay_blobs(&self, delay: Option<std::time::Duration>) {
        *self.state.delay_blobs.lock().unwrap() = delay;
    }

    /// How many `method` requests whose path contains `path` were forwarded.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((m, p), _)| m == method && p.contains(path))
            .map(|(_, n)| n)
            .sum()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    *state
        .counts
        .lock()
        .unwrap()
        .entry((method.to_string(), path.clone()))
        .or_default() += 1;
    let headers = request.headers().clone();
    let delay = *state.delay_blobs.lock().unwrap();
    if let Some(delay) =
        delay.filter(|_| method == axum::http::Method::GET && path.contains("/blobs/sha256:"))
    {
        tokio::time::sleep(delay).await;
    }
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let mut upstream = state
        .http
        .request(method.clone(), format!("{}{path_and_query}", state.target))
        .body(body);
    for (name, value) in &headers {
        if name != axum::http::header::HOST {
            upstream = upstream.header(name, value);
        }
    }
    let response = match upstream.send().await {
        Ok(response) => response,
        Err(err) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(err.to_string()))
                .unwrap();
        }
    };
    let mut builder = Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(HeaderName::from(name), value);
    }
    let cut = *state.cut_blobs_after.lock().unwrap();
    let is_blob = method == axum::http::Method::GET && path.contains("/blobs/sha256:");
    let body = match cut.filter(|_| is_blob) {
        None => Body::from_stream(response.bytes_stream()),
        Some(limit) => {
            // Send the first `limit` bytes, give the server time to flush them with the
            // headers, then fail the body: the client sees a response that breaks off.
            // (Failing in the same poll would abort the response before its headers.)
            let whole = response.bytes().await.unwrap_or_default();
            let prefix = whole.slice(..limit.min(whole.len()));
            let cut = async {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                Err::<bytes::Bytes, _>(std::io::Error::other("cut by the test proxy"))
            };
            let stream =
                futures::stream::once(async move { Ok(prefix) }).chain(futures::stream::once(cut));
            Body::from_stream(stream)
        }
    };
    builder.body(body).unwrap()
}
