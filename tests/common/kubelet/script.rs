//! What the test kubelet does with one pod: how long it stays Pending and Running, whether
//! a [`Gate`] holds it, and how it ends (pure data; a gate is a channel). Test code only.

use std::sync::Arc;
use std::time::Duration;

use kiln::oci::digest::Digest;
use tokio::sync::watch;

use super::receiver::Receivers;

/// The termination message BuildKit's metadata file gives for a pushed image.
pub fn buildkit_metadata(digest: &Digest) -> String {
    serde_json::json!({ "containerimage.digest": digest.to_string() }).to_string()
}

/// How a pod's build ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0, reason `Completed`, with `message` as the termination message.
    Succeeded {
        /// The termination message (BuildKit's metadata JSON, or anything a test needs).
        message: String,
    },
    /// A non-zero exit code, reason `Error`, with `message` as the termination message.
    Failed {
        /// The container's exit code.
        exit_code: i32,
        /// The termination message.
        message: String,
    },
    /// Killed by the kernel's OOM killer: exit code 137, reason `OOMKilled`.
    OomKilled,
    /// Evicted by the node: pod-level `status.reason: Evicted` with `message`, the
    /// `DisruptionTarget` condition, containers killed (exit code 137).
    Evicted {
        /// The pod-level message.
        message: String,
    },
    /// Ran past `activeDeadlineSeconds`: pod-level `status.reason: DeadlineExceeded`.
    DeadlineExceeded,
    /// An init container exited non-zero (with `message` as its termination message); the
    /// main containers never started.
    InitFailed {
        /// The init container's exit code.
        exit_code: i32,
        /// Its termination message.
        message: String,
    },
}

/// A gate that holds pods Running until the test releases it. Clones share the gate.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    /// Opens the gate: every pod held by it (now or later) goes on to its outcome.
    pub fn release(&self) {
        self.0.send_replace(true);
    }

    pub(super) async fn opened(&self) {
        let mut released = self.0.subscribe();
        // The sender lives in self, so wait_for cannot fail while we wait.
        let _ = released.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// What the test kubelet does with one pod.
#[derive(Clone, Debug)]
pub struct Script {
    /// How long the pod stays Pending (bound, containers `ContainerCreating`).
    pub pending_for: Duration,
    /// How long it runs before its outcome (after the gate opens, when there is one).
    pub running_for: Duration,
    /// Holds the pod Running until released.
    pub hold: Option<Gate>,
    /// How it ends.
    pub outcome: Outcome,
    /// Runs the pod's `context` init container for real first, when it has one.
    pub receiver: Option<Receivers>,
}

impl Script {
    fn ending(outcome: Outcome) -> Self {
        Self {
            pending_for: Duration::ZERO,
            running_for: Duration::ZERO,
            hold: None,
            outcome,
            receiver: None,
        }
    }

    /// Succeeds, reporting `digest` the way BuildKit does.
    pub fn succeed(digest: &Digest) -> Self {
        Self::succeed_with_message(buildkit_metadata(digest))
    }

    /// Succeeds with an arbitrary termination message (e.g. malformed metadata).
    pub fn succeed_with_message(message: impl Into<String>) -> Self {
        Self::ending(Outcome::Succeeded {
            message: message.into(),
        })
    }

    /// Fails with `exit_code` and `message`.
    pub fn fail(exit_code: i32, message: impl Into<String>) -> Self {
        Self::ending(Outcome::Failed {
            exit_code,
            message: message.into(),
        })
    }

    /// Is OOM-killed.
    pub fn oom_killed() -> Self {
        Self::ending(Outcome::OomKilled)
    }

    /// Is evicted for memory pressure.
    pub fn evicted() -> Self {
        Self::ending(Outcome::Evicted {
            message: "The node was low on resource: memory. Threshold quantity: 100Mi, \
                      available: 42Mi."
                .to_owned(),
        })
    }

    /// Runs until `activeDeadlineSeconds` fails it (forever, without one).
    pub fn run_until_deadline() -> Self {
        Self::ending(Outcome::DeadlineExceeded).hold_until(&Gate::new())
    }

    /// Stays Pending for `duration` first.
    pub fn pending_for(mut self, duration: Duration) -> Self {
        self.pending_for = duration;
        self
    }

    /// Runs for `duration` before the outcome.
    pub fn running_for(mut self, duration: Duration) -> Self {
        self.running_for = duration;
        self
    }

    /// Runs the pod's `context` init container (`kiln context receive`) for real with
    /// `receivers` before the build, and fails the pod as a kubelet would when it fails.
    pub fn receiving_context(mut self, receivers: &Receivers) -> Self {
        self.receiver = Some(receivers.clone());
        self
    }

    /// Stays Running until `gate` is released.
    pub fn hold_until(mut self, gate: &Gate) -> Self {
        self.hold = Some(gate.clone());
        self
    }
}
