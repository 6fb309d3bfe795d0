//! The HTTP service's one router: `/v2/` (the OCI Distribution API), `/token`,
//! `/admin/v1/`, `/healthz`, `/readyz` and `/metrics` on one listener, with the layers
//! every request passes (metrics, body idle timeout, a span per request).

use axum::Router;
use axum::routing::{any, get};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::registry::auth::token_handler;
use crate::registry::service::Registry;
use crate::registry::{admin, ops, route};

impl Registry {
    /// The HTTP service: `/v2/` (the OCI Distribution API), `/token`, `/admin/v1/`, and
    /// `/healthz`, `/readyz`, `/metrics`, all on one listener.
    pub fn router(&self) -> Router {
        let token = Router::new()
            .route("/token", get(token_handler).post(token_handler))
            .with_state(self.auth().clone());
        Router::new()
            .route("/v2", any(route::v2))
            .route("/v2/", any(route::v2))
            .route("/v2/{*rest}", any(route::v2))
            .route("/admin/v1/{*rest}", any(admin::handle))
            .route("/healthz", get(ops::healthz))
            .route("/readyz", get(ops::readyz))
            .route("/metrics", get(ops::metrics))
            .merge(token)
            .fallback(route::unknown)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                ops::track,
            ))
            .layer(RequestBodyTimeoutLayer::new(
                self.limits().body_idle_timeout,
            ))
            // A span per request (method, URI) for the logs of everything it does.
            .layer(tower_http::trace::TraceLayer::new_for_http())
            .with_state(self.clone())
    }
}
