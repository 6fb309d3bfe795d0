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

/// The method as a metrics label: the standard ones by name, anything else as `OTHER`
/// (clients choose the method; labels must not grow without bound).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Counts every request by route, method and status, times it to the response headers,
/// and counts body bytes in and out.
pub async fn track(State(registry): State<Registry>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let metrics = registry.metrics().clone();
    let method = method_label(request.method());
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

#[cfg(test)]
mod tests {
    use crate::registry::testing::TestRegistry;

    #[tokio::test]
    async fn health_readiness_and_metrics_need_no_token() {
        let registry = TestRegistry::authenticated();
        registry.get("/healthz").await.expect(200, None);
        registry.get("/readyz").await.expect(200, None);
        registry.get("/v2/").await.expect(401, Some("UNAUTHORIZED"));
        registry.registry.set_ready(false);
        registry.get("/readyz").await.expect(503, None);
        let metrics = registry.get("/metrics").await;
        metrics.expect(200, None);
        assert!(
            metrics
                .header("content-type")
                .starts_with("application/openmetrics-text")
        );
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        for line in [
            "kiln_cache_http_requests_total{route=\"base\",method=\"GET\",status=\"401\"} 1",
            "kiln_cache_http_requests_total{route=\"readyz\",method=\"GET\",status=\"503\"} 1",
            "kiln_cache_http_request_duration_seconds_count{route=\"healthz\"} 1",
            "kiln_cache_http_sent_bytes_total",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[tokio::test]
    async fn unknown_methods_share_one_label() {
        let registry = TestRegistry::open();
        for method in ["BREW", "WHEN"] {
            let method = axum::http::Method::from_bytes(method.as_bytes()).unwrap();
            registry
                .call(method, "/v2/", &[], axum::body::Body::empty())
                .await
                .expect(405, Some("UNSUPPORTED"));
        }
        let labels = &registry.registry.metrics().requests;
        let other = crate::registry::metrics::RequestLabels {
            route: "base",
            method: "OTHER",
            status: 405,
        };
        assert_eq!(labels.get_or_create(&other).get(), 2);
    }

    #[tokio::test]
    async fn bytes_in_and_out_are_counted() {
        let registry = TestRegistry::open();
        let digest = registry.push_blob("a", &[7u8; 1000]).await;
        registry
            .get(&format!("/v2/a/blobs/{digest}"))
            .await
            .expect(200, None);
        let metrics = registry.registry.metrics();
        assert_eq!(metrics.bytes_in.get(), 1000);
        assert!(metrics.bytes_out.get() >= 1000);
    }
}
