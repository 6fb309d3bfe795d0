//! Reaching the in-cluster cache service's admin API from a workstation: the admin token
//! from its Secret, and a local port forwarded to a ready cache pod, as `kubectl
//! port-forward` does (I/O: the Kubernetes API and a loopback listener).
//!
//! The API server's service proxy cannot be used: it authenticates the caller with the
//! `Authorization` header and removes it, and the admin API needs that header for its own
//! token. A port-forward carries the request to the pod unchanged.

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::net::TcpListener;

use super::error::PluginError;
use crate::controller::podstate::is_live;

/// Where the cache service runs, as the Helm chart names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheTarget {
    /// Namespace of the release.
    pub namespace: String,
    /// The cache Service.
    pub service: String,
    /// The Secret holding the admin token.
    pub admin_secret: String,
    /// The key of the token in that Secret.
    pub admin_secret_key: String,
}

/// Reads the admin token from its Secret (trailing whitespace removed).
pub async fn admin_token(client: &Client, target: &CacheTarget) -> Result<String, PluginError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let read_error = |why: String| PluginError::AdminToken {
        namespace: target.namespace.clone(),
        secret: target.admin_secret.clone(),
        why,
    };
    let secret = secrets
        .get_opt(&target.admin_secret)
        .await
        .map_err(|e| read_error(crate::report::error_chain(&e)))?
        .ok_or_else(|| read_error("it does not exist".to_owned()))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&target.admin_secret_key))
        .ok_or_else(|| read_error(format!("it has no key {:?}", target.admin_secret_key)))?;
    let token = String::from_utf8(bytes.0.clone())
        .map_err(|_| read_error("the token is not UTF-8".to_owned()))?;
    Ok(token.trim_end().to_owned())
}

/// The pod and container port that serve the Service's first port (named `http` if one is).
pub fn service_target(service: &Service, pods: &[Pod]) -> Result<(String, u16), String> {
    let spec = service.spec.as_ref().ok_or("the Service has no spec")?;
    let ports = spec.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .or_else(|| ports.first())
        .ok_or("the Service has no ports")?;
    let mut ready: Vec<&Pod> = pods
        .iter()
        .filter(|p| is_live(p) && p.metadata.deletion_timestamp.is_none() && is_ready(p))
        .collect();
    ready.sort_by_key(|p| p.name_any());
    let pod = ready.first().ok_or("no ready pod backs the Service")?;
    let target = port
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(port.port));
    let number = match target {
        IntOrString::Int(n) => u16::try_from(n).map_err(|_| format!("port {n} is out of range"))?,
        IntOrString::String(name) => pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("pod {} has no port named {name:?}", pod.name_any()))?,
    };
    Ok((pod.name_any(), number))
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A loopback address forwarded to the cache pod, until dropped.
pub struct Forward {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards a loopback port to the pod behind the cache Service: each accepted connection
/// opens its own port-forward stream to the pod.
pub async fn forward(client: &Client, target: &CacheTarget) -> Result<Forward, PluginError> {
    let forward_error = |why: String| PluginError::PortForward {
        namespace: target.namespace.clone(),
        service: target.service.clone(),
        why,
    };
    let services: Api<Service> = Api::namespaced(client.clone(), &target.namespace);
    let service = services
        .get_opt(&target.service)
        .await
        .map_err(|e| forward_error(crate::report::error_chain(&e)))?
        .ok_or_else(|| forward_error("the Service does not exist".to_owned()))?;
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| forward_error("the Service has no selector".to_owned()))?
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let candidates = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| forward_error(crate::report::error_chain(&e)))?
        .items;
    let (pod, port) = service_target(&service, &candidates).map_err(forward_error)?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| forward_error(format!("binding a loopback port: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| forward_error(format!("reading the loopback port: {e}")))?;
    let task = tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            let pods = pods.clone();
            let pod = pod.clone();
            tokio::spawn(async move {
                let mut forwarder = match pods.portforward(&pod, &[port]).await {
                    Ok(f) => f,
                    Err(error) => {
                        tracing::warn!(
                            pod,
                            error = crate::report::error_chain(&error),
                            "port-forward"
                        );
                        return;
                    }
                };
                if let Some(mut upstream) = forwarder.take_stream(port) {
                    let _ = tokio::io::copy_bidirectional(&mut connection, &mut upstream).await;
                }
                let _ = forwarder.join().await;
            });
        }
    });
    Ok(Forward {
        url: format!("http://{local}"),
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(target: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kiln-cache"},
            "spec": {
                "selector": {"app.kubernetes.io/component": "cache"},
                "ports": [
                    {"name": "metrics", "port": 9090},
                    {"name": "http", "port": 5000, "targetPort": target},
                ],
            },
        }))
        .unwrap()
    }

    fn pod(name: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "cache", "ports": [{"name": "http", "containerPort": 5001}]}]},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_http_port_of_a_ready_pod_is_chosen() {
        let pods = [pod("kiln-cache-1", false), pod("kiln-cache-0", true)];
        assert_eq!(
            service_target(&service(serde_json::json!(5000)), &pods),
            Ok(("kiln-cache-0".to_owned(), 5000))
        );
        // A named target port is looked up on the pod.
        assert_eq!(
            service_target(&service(serde_json::json!("http")), &pods),
            Ok(("kiln-cache-0".to_owned(), 5001))
        );
    }

    #[test]
    fn without_a_ready_pod_the_reason_is_given() {
        let pods = [pod("kiln-cache-0", false)];
        assert_eq!(
            service_target(&service(serde_json::json!(5000)), &pods),
            Err("no ready pod backs the Service".to_owned())
        );
        let named = service_target(&service(serde_json::json!("admin")), &[pod("p", true)]);
        assert_eq!(named, Err("pod p has no port named \"admin\"".to_owned()));
    }
}
