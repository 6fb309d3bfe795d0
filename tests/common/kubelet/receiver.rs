//! Runs a build pod's `context` init container for real: the Kiln binary's
//! `kiln context receive`, with the pod's own arguments and its cache-token Secret laid out
//! as the mounted Docker config, listening on an address of this machine that the API
//! server's `pods/proxy` can reach (I/O: a process, files, the API). Test code only.
//!
//! The API server refuses to proxy to loopback or link-local addresses, so the receiver
//! listens on this machine's first global IPv4 address (what `ip -4 -o addr show scope
//! global` lists), which the test kubelet reports as the pod's IP. The port is the one the
//! pod spec names, so receivers run one at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kiln::controller::podstate::CONTEXT_CONTAINER;
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

/// What the receivers of one test share: the binary, the address, a directory per pod.
#[derive(Clone, Debug)]
pub struct Receivers {
    binary: PathBuf,
    ip: String,
    root: Arc<tempfile::TempDir>,
    /// One receiver at a time: they all listen on the pod spec's port.
    one_at_a_time: Arc<Mutex<()>>,
}

/// How a receiver ended.
#[derive(Clone, Debug)]
pub struct ReceiverRun {
    /// Its exit code (-1 when killed by a signal).
    pub exit_code: i32,
    /// Its termination message.
    pub message: String,
}

impl Receivers {
    /// Receivers of `binary` on this machine's first global IPv4 address; `Err` says why
    /// there is none.
    pub fn new(binary: &Path) -> Result<Self, String> {
        Ok(Self {
            binary: binary.to_owned(),
            ip: global_ipv4()?,
            root: Arc::new(tempfile::tempdir().map_err(|err| format!("temp dir: {err}"))?),
            one_at_a_time: Arc::new(Mutex::new(())),
        })
    }

    /// The address pods are reported at.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// Where the receiver of pod `pod` unpacks its context.
    pub fn context_dir(&self, pod: &str) -> PathBuf {
        self.root.path().join(pod).join("workspace/context")
    }

    /// Whether `pod` has a `context` init container.
    pub fn wanted_by(pod: &Pod) -> bool {
        receiver_args(pod).is_some()
    }

    /// Runs the pod's receiver to its end.
    pub async fn run(&self, client: Client, pod: &Pod) -> Result<ReceiverRun, String> {
        let name = pod.name_any();
        let args = receiver_args(pod).ok_or_else(|| format!("pod {name} has no receiver"))?;
        let dir = self.root.path().join(&name);
        let docker = dir.join("docker");
        std::fs::create_dir_all(&docker).map_err(|err| format!("{}: {err}", docker.display()))?;
        let termination_log = dir.join("termination-log");
        let mut command = tokio::process::Command::new(&self.binary);
        for arg in args {
            let arg = if arg.starts_with("--listen=") {
                let port = arg.rsplit(':').next().unwrap_or("8080");
                format!("--listen={}:{port}", self.ip)
            } else if arg.starts_with("--dest=") {
                format!("--dest={}", self.context_dir(&name).display())
            } else if arg.starts_with("--termination-log=") {
                format!("--termination-log={}", termination_log.display())
            } else {
                arg
            };
            command.arg(arg);
        }
        if let Some(secret) = docker_config_secret(pod) {
            let namespace = pod.namespace().unwrap_or_default();
            let secret = Api::<Secret>::namespaced(client, &namespace)
                .get(&secret)
                .await
                .map_err(|err| format!("reading Secret {secret}: {err}"))?;
            let config = secret
                .data
                .unwrap_or_default()
                .remove(kiln::controller::validate::DOCKER_CONFIG_KEY)
                .ok_or("the Docker config Secret has no .dockerconfigjson")?;
            std::fs::write(docker.join("config.json"), config.0)
                .map_err(|err| format!("writing the Docker config: {err}"))?;
            command.env("DOCKER_CONFIG", &docker);
        }
        command.kill_on_drop(true);
        let _turn = self.one_at_a_time.lock().await;
        let status = command
            .status()
            .await
            .map_err(|err| format!("running {}: {err}", self.binary.display()))?;
        let message = std::fs::read_to_string(&termination_log).unwrap_or_default();
        Ok(ReceiverRun {
            exit_code: status.code().unwrap_or(-1),
            message,
        })
    }
}

fn receiver_args(pod: &Pod) -> Option<Vec<String>> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTEXT_CONTAINER)?
        .args
        .clone()
}

/// The Secret the pod mounts as its Docker config.
fn docker_config_secret(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == "docker-config")?
        .secret
        .as_ref()?
        .secret_name
        .clone()
}

/// This machine's first global IPv4 address.
fn global_ipv4() -> Result<String, String> {
    let output = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .map_err(|err| format!("running `ip -4 -o addr` (iproute2): {err}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "this machine has no global IPv4 address for the API server to proxy to (ip -4 -o addr show scope global printed {text:?})"
            )
        })
}
