//! The cache service's Prometheus metrics: requests by route and status, latency, bytes in
//! and out, GC runs and bytes freed, store size (the mirror registers its own, see
//! [`crate::registry::mirror::MirrorMetrics`]); encoded for `/metrics` (pure apart from the atomics).

use crate::metric_family::SortedFamily;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of `/metrics` (OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The labels of a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's name ([`RouteLabel`]).
    pub route: &'static str,
    /// The HTTP method (`OTHER` for non-standard ones).
    pub method: &'static str,
    /// The status code.
    pub status: u16,
}

/// The route label of a latency observation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's name.
    pub route: &'static str,
}

/// The outcome label of a GC run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct GcLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// The name of the route that answered a request, put in the response's extensions by
/// the handler so that the metrics layer labels without parsing the path again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLabel(pub &'static str);

/// The service's metrics.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    /// Requests answered.
    pub requests: SortedFamily<RequestLabels, Counter>,
    /// Time to the response's headers, by route.
    pub latency: SortedFamily<RouteLabels, Histogram>,
    /// Request body bytes received.
    pub bytes_in: Counter,
    /// Response body bytes sent.
    pub bytes_out: Counter,
    /// Requests being answered now.
    pub in_flight: Gauge,
    /// GC runs.
    pub gc_runs: SortedFamily<GcLabels, Counter>,
    /// Bytes GC freed.
    pub gc_freed_bytes: Counter,
    /// Bytes in the store, as of the last GC (or start).
    pub store_bytes: Gauge,
    /// Upload sessions open.
    pub uploads_in_progress: Gauge,
    /// Upload sessions removed after a TTL without a request.
    pub uploads_expired: Counter,
}

impl Default for CacheMetrics {
    fn default() -> Self {
        Self {
            requests: SortedFamily::default(),
            latency: SortedFamily::new(|| {
                // 1 ms to ~65 s: a manifest HEAD to a large blob over a slow link.
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            in_flight: Gauge::default(),
            gc_runs: SortedFamily::default(),
            gc_freed_bytes: Counter::default(),
            store_bytes: Gauge::default(),
            uploads_in_progress: Gauge::default(),
            uploads_expired: Counter::default(),
        }
    }
}

impl CacheMetrics {
    /// Registers every metric under `kiln_cache_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("kiln_cache");
        registry.register(
            "http_requests",
            "Requests answered, by route, method and status",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response headers, by route",
            self.latency.clone(),
        );
        registry.register(
            "http_received_bytes",
            "Request body bytes received",
            self.bytes_in.clone(),
        );
        registry.register(
            "http_sent_bytes",
            "Response body bytes sent",
            self.bytes_out.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Requests being answered",
            self.in_flight.clone(),
        );
        registry.register("gc_runs", "Online GC runs, by result", self.gc_runs.clone());
        registry.register(
            "gc_freed_bytes",
            "Bytes freed by online GC and admin prunes",
            self.gc_freed_bytes.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes of content in the store, as of the last GC or prune",
            self.store_bytes.clone(),
        );
        registry.register(
            "uploads_in_progress",
            "Upload sessions open",
            self.uploads_in_progress.clone(),
        );
        registry.register(
            "uploads_expired",
            "Upload sessions removed after --upload-ttl without a request",
            self.uploads_expired.clone(),
        );
    }
}

/// Encodes `registry` for `/metrics`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would leave a partial page, which
    // Prometheus rejects and reports.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_their_names_and_labels() {
        let metrics = CacheMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: "blob",
                method: "GET",
                status: 200,
            })
            .inc();
        metrics
            .latency
            .get_or_create(&RouteLabels { route: "blob" })
            .observe(0.003);
        metrics.bytes_out.inc_by(42);
        metrics.store_bytes.set(7);
        let text = encode(&registry);
        for line in [
            "kiln_cache_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 1",
            "kiln_cache_http_sent_bytes_total 42",
            "kiln_cache_store_bytes 7",
            "kiln_cache_http_request_duration_seconds_count{route=\"blob\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
    }
}
