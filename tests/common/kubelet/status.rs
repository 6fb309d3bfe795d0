//! The pod status a kubelet reports at each stage of a test kubelet's script (pure: the
//! time is an argument). Test code only.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{NODE_IP, Outcome};

/// Where a pod is in its script.
pub enum Stage<'a> {
    Pending {
        started: &'a Time,
    },
    /// The init containers run (the pod has its IP); the main ones wait.
    Initializing {
        started: &'a Time,
        since: &'a Time,
        ip: &'a str,
    },
    Running {
        started: &'a Time,
        since: &'a Time,
        ip: &'a str,
    },
    Ended {
        started: &'a Time,
        since: &'a Time,
        ip: &'a str,
        outcome: &'a Outcome,
    },
}

/// What a stage looks like in a pod's status.
struct Look {
    phase: &'static str,
    /// Containers running and ready.
    ready: bool,
    /// The first container's state (the build's); `others` is every other container's.
    first: ContainerState,
    others: ContainerState,
    /// Pod-level reason and message (Evicted, DeadlineExceeded).
    reason: Option<&'static str>,
    message: Option<String>,
}

fn waiting(reason: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: None,
        }),
        ..ContainerState::default()
    }
}

fn running(since: &Time) -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(since.clone()),
        }),
        ..ContainerState::default()
    }
}

fn exited(
    exit_code: i32,
    reason: &str,
    message: Option<&str>,
    since: &Time,
    at: &Time,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code,
            reason: Some(reason.to_owned()),
            message: message.filter(|m| !m.is_empty()).map(str::to_owned),
            started_at: Some(since.clone()),
            finished_at: Some(at.clone()),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    }
}

fn look(stage: &Stage<'_>, at: &Time) -> Look {
    let Stage::Ended { since, outcome, .. } = stage else {
        let (phase, ready, state) = match stage {
            Stage::Running { since, .. } => ("Running", true, running(since)),
            Stage::Initializing { .. } => ("Pending", false, waiting("PodInitializing")),
            _ => ("Pending", false, waiting("ContainerCreating")),
        };
        return Look {
            phase,
            ready,
            first: state.clone(),
            others: state,
            reason: None,
            message: None,
        };
    };
    let completed = || exited(0, "Completed", None, since, at);
    let killed = || exited(137, "Error", None, since, at);
    let ended = |phase, first| Look {
        phase,
        ready: false,
        first,
        others: completed(),
        reason: None,
        message: None,
    };
    match outcome {
        Outcome::Succeeded { message } => ended(
            "Succeeded",
            exited(0, "Completed", Some(message), since, at),
        ),
        Outcome::Failed { exit_code, message } => ended(
            "Failed",
            exited(*exit_code, "Error", Some(message), since, at),
        ),
        Outcome::OomKilled => ended("Failed", exited(137, "OOMKilled", None, since, at)),
        // The init container's exit is written by `status`; the main ones never started.
        Outcome::InitFailed { .. } => Look {
            others: waiting("PodInitializing"),
            ..ended("Failed", waiting("PodInitializing"))
        },
        Outcome::Evicted { message } => Look {
            others: killed(),
            reason: Some("Evicted"),
            message: Some(message.clone()),
            ..ended("Failed", killed())
        },
        Outcome::DeadlineExceeded => Look {
            others: killed(),
            reason: Some("DeadlineExceeded"),
            message: Some(
                "Pod was active on the node longer than the specified deadline".to_owned(),
            ),
            ..ended("Failed", killed())
        },
    }
}

/// The status a kubelet would report at time `at` for `pod` at `stage`.
pub fn status(pod: &Pod, stage: &Stage<'_>, at: &Time) -> PodStatus {
    let (started, ip) = match stage {
        Stage::Pending { started } => (*started, None),
        Stage::Initializing { started, ip, .. }
        | Stage::Running { started, ip, .. }
        | Stage::Ended { started, ip, .. } => (*started, Some(*ip)),
    };
    let Look {
        phase,
        ready,
        first,
        others,
        reason,
        message,
    } = look(stage, at);
    let condition = |kind: &str, ok: bool, reason: Option<&str>| PodCondition {
        type_: kind.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.map(str::to_owned),
        last_transition_time: Some(at.clone()),
        ..PodCondition::default()
    };
    let not_ready = match stage {
        Stage::Ended { .. } => Some("PodCompleted"),
        _ => Some("ContainersNotReady"),
    }
    .filter(|_| !ready);
    let mut conditions = vec![
        condition("PodReadyToStartContainers", ready, None),
        condition(
            "Initialized",
            !matches!(
                stage,
                Stage::Initializing { .. }
                    | Stage::Ended {
                        outcome: Outcome::InitFailed { .. },
                        ..
                    }
            ),
            None,
        ),
        condition("Ready", ready, not_ready),
        condition("ContainersReady", ready, not_ready),
        condition("PodScheduled", true, None),
    ];
    if reason == Some("Evicted") {
        let mut disruption = condition("DisruptionTarget", true, Some("TerminationByKubelet"));
        disruption.message.clone_from(&message);
        conditions.push(disruption);
    }
    let container =
        |name: &str, image: Option<&String>, state: ContainerState, ready: bool| ContainerStatus {
            name: name.to_owned(),
            image: image.cloned().unwrap_or_default(),
            image_id: String::new(),
            ready,
            started: Some(ready),
            restart_count: 0,
            state: Some(state),
            ..ContainerStatus::default()
        };
    let spec = pod.spec.clone().unwrap_or_default();
    // Init containers have completed by the time the main ones run.
    let init_state = match stage {
        Stage::Initializing { since, .. } => running(since),
        Stage::Ended {
            since,
            outcome: Outcome::InitFailed { exit_code, message },
            ..
        } => exited(*exit_code, "Error", Some(message), since, at),
        _ => exited(0, "Completed", None, started, at),
    };
    let init_container_statuses = ip.and(spec.init_containers.as_ref()).map(|inits| {
        let done = init_state;
        inits
            .iter()
            .map(|init| container(&init.name, init.image.as_ref(), done.clone(), false))
            .collect()
    });
    let container_statuses = spec
        .containers
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let state = if index == 0 {
                first.clone()
            } else {
                others.clone()
            };
            container(&c.name, c.image.as_ref(), state, ready)
        })
        .collect();
    PodStatus {
        phase: Some(phase.to_owned()),
        reason: reason.map(str::to_owned),
        message,
        conditions: Some(conditions),
        host_ip: Some(NODE_IP.to_owned()),
        pod_ip: ip.map(str::to_owned),
        pod_ips: ip.map(|ip| vec![PodIP { ip: ip.to_owned() }]),
        start_time: Some(started.clone()),
        qos_class: pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        init_container_statuses,
        container_statuses: Some(container_statuses),
        ..PodStatus::default()
    }
}
