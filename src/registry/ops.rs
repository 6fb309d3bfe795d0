//! Operations endpoints on the service's one listener — `/healthz`, `/readyz`, `/metrics`,
//! unauthenticated so that kubelet and Prometheus need no token — and the layer that
//! measures every request (no I/O beyond the response).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::registry::body::Counted;
use crate::registry::metrics::{self, RequestLabels, RouteLabel, RouteLabels};
use crate::registry::service::Registry;

/// `/healthz`: the process answers.
pub async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// `/readyz`: the store is open and the server is not shutting down (503 while draining,
/// so that the Service stops sending new requests).
pub async fn readyz(State(registry): State<Registry>) -> Response {
    if registry.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

/// `/metrics`: OpenMetrics text.
pub async fn metrics(State(registry): State<Registry>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::encode(registry.prometheus()),
    )
        .into_response()
}

/// Counts every request by route, method and status, times it to the response headers,
/// and counts body bytes in and out.
pub async fn track(State(registry): State<Registry>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let metrics = registry.metrics().clone();
    let method = request.method().to_string();
    let path_label = match request.uri().path() {
        "/healthz" => Some("healthz"),
        "/readyz" => Some("readyz"),
        "/metrics" => Some("metrics"),
        "/token" => Some("token"),
        _ => None,
    };
    let request = request.map(|body| Body::new(Counted::new(body, metrics.bytes_in.clone())));
    metrics.in_flight.inc();
    let response = next.run(request).await;
    metrics.in_flight.dec();
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map(|label| label.0)
        .or(path_label)
        .unwrap_or("unknown");
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .latency
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response.map(|body| Body::new(Counted::new(body, metrics.bytes_out.clone())))
}
