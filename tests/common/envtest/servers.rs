//! Where one control plane keeps its files and how its three servers are invoked (pure:
//! paths and command lines; the harness does the I/O).

use std::path::{Path, PathBuf};

/// kube-controller-manager runs only what the tests rely on: owner-reference garbage
/// collection, namespace deletion, the `default` ServiceAccount of each namespace (pods
/// are admitted only once it exists) and the aggregated `admin`/`edit`/`view` roles.
/// Without the node lifecycle controller, the test kubelet's Node stays Ready without
/// heartbeats.
pub const CONTROLLERS: &str = "garbage-collector-controller,namespace-controller,\
serviceaccount-controller,clusterrole-aggregation-controller";

/// The audit log, relative to the control plane's directory.
pub const AUDIT_LOG: &str = "audit.log";
/// The audit policy, relative to the control plane's directory.
pub const AUDIT_POLICY: &str = "audit-policy.yaml";
/// Created by etcd once it serves clients, relative to the control plane's directory.
pub const ETCD_READY: &str = "etcd.ready";

/// The loopback ports of one control plane.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// etcd's client port (kube-apiserver's storage).
    pub etcd_client: u16,
    /// etcd's peer port (unused by a single member, but etcd listens on it).
    pub etcd_peer: u16,
    /// kube-apiserver's HTTPS port.
    pub apiserver: u16,
}

/// One control plane's directory and ports. The certificates and kubeconfigs in `pki/`
/// are those `kiln-envtest pki` writes.
pub struct Layout {
    root: PathBuf,
    ports: Ports,
}

impl Layout {
    /// The layout of a control plane in `root` on `ports`.
    pub fn new(root: &Path, ports: Ports) -> Self {
        Self {
            root: root.to_path_buf(),
            ports,
        }
    }

    /// The control plane's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The API server's URL.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.apiserver)
    }

    /// `name` in the control plane's directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `name` among the certificates, keys and kubeconfigs.
    pub fn pki(&self, name: &str) -> PathBuf {
        self.root.join("pki").join(name)
    }

    /// The log file of `server`.
    pub fn log(&self, server: &str) -> PathBuf {
        self.root.join(format!("{server}.log"))
    }

    fn path(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }

    fn pki_path(&self, name: &str) -> String {
        self.pki(name).display().to_string()
    }

    /// `kiln-envtest pki` arguments.
    pub fn pki_args(&self) -> Vec<String> {
        vec![
            format!("--dir={}", self.root.join("pki").display()),
            format!("--server={}", self.server_url()),
        ]
    }

    /// `kiln-envtest etcd` arguments.
    pub fn etcd_args(&self) -> Vec<String> {
        vec![
            format!("--data-dir={}", self.path("etcd")),
            format!(
                "--listen-client-url=http://127.0.0.1:{}",
                self.ports.etcd_client
            ),
            format!(
                "--listen-peer-url=http://127.0.0.1:{}",
                self.ports.etcd_peer
            ),
            format!("--ready-file={}", self.path(ETCD_READY)),
        ]
    }

    /// `kiln-envtest kube-apiserver` arguments: client certificates and service-account
    /// tokens for authentication, RBAC for authorization, an audit log of writes.
    pub fn apiserver_args(&self) -> Vec<String> {
        vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.ports.etcd_client),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", self.ports.apiserver),
            // Unused (the serving certificate is given) but kept out of /var/run.
            format!("--cert-dir={}", self.path("apiserver-certs")),
            format!("--tls-cert-file={}", self.pki_path("apiserver.crt")),
            format!("--tls-private-key-file={}", self.pki_path("apiserver.key")),
            format!("--client-ca-file={}", self.pki_path("ca.crt")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-account-key-file={}", self.pki_path("sa.pub")),
            format!(
                "--service-account-signing-key-file={}",
                self.pki_path("sa.key")
            ),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            "--allow-privileged=true".to_owned(),
            // No Endpoints churn for the `kubernetes` Service every 10 s: nothing here
            // reaches the API server through it.
            "--endpoint-reconciler-type=none".to_owned(),
            // Few clients at a time: request queueing would only cost CPU on two cores.
            "--enable-priority-and-fairness=false".to_owned(),
            "--profiling=false".to_owned(),
            format!("--audit-policy-file={}", self.path(AUDIT_POLICY)),
            format!("--audit-log-path={}", self.path(AUDIT_LOG)),
            "--audit-log-format=json".to_owned(),
        ]
    }

    /// `kiln-envtest kube-controller-manager` arguments.
    pub fn controller_manager_args(&self) -> Vec<String> {
        vec![
            format!(
                "--kubeconfig={}",
                self.pki_path("kube-controller-manager.kubeconfig")
            ),
            format!("--controllers={CONTROLLERS}"),
            // Each controller gets its own ServiceAccount and bootstrap role, as in a real
            // cluster, so RBAC is exercised on their side too.
            "--use-service-account-credentials=true".to_owned(),
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
            "--profiling=false".to_owned(),
        ]
    }
}
