//! Retention of finished build pods: how long each is kept, and when it goes (pure).
//!
//! A pod that finished on its own (succeeded, failed, evicted) is kept for
//! `spec.retention.succeededPodTTL` or `failedPodTTL` after its attempt ended (the
//! controller's `--succeeded-pod-ttl` and `--failed-pod-ttl` when the Build sets none), so
//! that its log stays readable. `decide` writes the time into the attempt's record
//! (`podRetainedUntil`) and the status message when the attempt ends; the sweeper deletes
//! the pod once that time has passed. The time written is the one kept: a later change of
//! `spec.retention` applies to attempts that end after it.
//!
//! A pod stopped by the controller (cancel, supersede, timeout) is deleted at once and
//! gets no retention time.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::config::Config;
use crate::crd::{AttemptRecord, AttemptResult, Build};
use crate::units::{format_duration, parse_duration};

/// How long a finished pod whose attempt ended with `result` is kept.
///
/// Durations the schema would have refused (it checks them at `kubectl apply`) fall back
/// to the controller's defaults rather than failing a Build that has already run.
pub fn pod_ttl(build: &Build, result: AttemptResult, config: &Config) -> Duration {
    let retention = build.spec.retention.as_ref();
    let (field, default) = match result {
        AttemptResult::Succeeded => (
            retention.and_then(|r| r.succeeded_pod_ttl.as_deref()),
            config.succeeded_pod_ttl,
        ),
        AttemptResult::Failed | AttemptResult::Cancelled => (
            retention.and_then(|r| r.failed_pod_ttl.as_deref()),
            config.failed_pod_ttl,
        ),
    };
    field
        .and_then(|text| parse_duration(text).ok())
        .unwrap_or(default)
}

/// `at + ttl`, saturating.
pub fn after(at: Timestamp, ttl: Duration) -> Timestamp {
    at.saturating_add(SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// The end of the status message of a finished Build: when its pod goes.
pub fn note(pod: &str, until: Timestamp, ttl: Duration) -> String {
    if ttl.is_zero() {
        format!("pod {pod} is deleted now (retention 0s)")
    } else {
        format!(
            "pod {pod} is kept until {until} (retention {})",
            format_duration(ttl)
        )
    }
}

/// When the finished `pod` of an ended attempt goes: the time its record announced or,
/// for a pod whose record is no longer in the history (or predates retention), its finish
/// time plus the TTL its phase calls for.
pub fn pod_expiry(
    build: &Build,
    record: Option<&AttemptRecord>,
    pod: &Pod,
    config: &Config,
) -> Timestamp {
    if let Some(until) = record.and_then(|r| r.pod_retained_until.as_ref()) {
        return until.0;
    }
    let result = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => AttemptResult::Succeeded,
        _ => AttemptResult::Failed,
    };
    let finished = record
        .and_then(|r| r.completion_time.as_ref().map(|t| t.0))
        .or_else(|| pod_finished_at(pod))
        .unwrap_or(Timestamp::UNIX_EPOCH);
    after(finished, pod_ttl(build, result, config))
}

/// When the pod's last container ended, or else when it started or was created.
pub fn pod_finished_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    let containers = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    containers
        .or_else(|| status.and_then(|s| s.start_time.as_ref()).map(|t| t.0))
        .or_else(|| pod.creation_timestamp().map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::PodFixture;
    use crate::crd::Retention;
    use crate::crd::fixtures::{T0, at};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn with_retention(succeeded: Option<&str>, failed: Option<&str>) -> Build {
        let mut build = Build::test("app");
        build.spec.retention = Some(Retention {
            succeeded_pod_ttl: succeeded.map(str::to_owned),
            failed_pod_ttl: failed.map(str::to_owned),
            attempt_history: None,
        });
        build
    }

    #[test]
    fn retention_ttls_come_from_the_spec_or_the_controller() {
        let config = Config::default();
        let table = [
            (Build::test("app"), AttemptResult::Succeeded, 3600),
            (Build::test("app"), AttemptResult::Failed, 86_400),
            (Build::test("app"), AttemptResult::Cancelled, 86_400),
            (
                with_retention(Some("10m"), None),
                AttemptResult::Succeeded,
                600,
            ),
            (
                with_retention(Some("10m"), None),
                AttemptResult::Failed,
                86_400,
            ),
            (with_retention(None, Some("0s")), AttemptResult::Failed, 0),
            (
                with_retention(None, Some("1h30m")),
                AttemptResult::Failed,
                5400,
            ),
            // Refused by the schema; the default rather than a failure.
            (
                with_retention(Some("soon"), None),
                AttemptResult::Succeeded,
                3600,
            ),
        ];
        for (build, result, secs) in table {
            assert_eq!(
                pod_ttl(&build, result, &config),
                Duration::from_secs(secs),
                "{:?} {result:?}",
                build.spec.retention
            );
        }
    }

    #[test]
    fn retention_expiry_prefers_the_announced_time() {
        let build = Build::test("app");
        let config = Config::default();
        let pod = PodFixture::new("app", 1).exited(1, "boom").pod;
        let mut record = AttemptRecord {
            attempt: 1,
            pod_name: "app-1".into(),
            pod_uid: None,
            generation: 1,
            start_time: Time(T0),
            completion_time: Some(Time(at(100))),
            result: Some(AttemptResult::Failed),
            reason: None,
            message: None,
            digest: None,
            pod_retained_until: Some(Time(at(500))),
            log: None,
        };
        assert_eq!(pod_expiry(&build, Some(&record), &pod, &config), at(500));
        record.pod_retained_until = None;
        assert_eq!(
            pod_expiry(&build, Some(&record), &pod, &config),
            at(100 + 86_400)
        );
    }

    #[test]
    fn retention_of_a_pod_without_a_record_counts_from_its_end() {
        let build = Build::test("app");
        let config = Config::default();
        let pushed = PodFixture::new("app", 1)
            .pushed("sha256:4444444444444444444444444444444444444444444444444444444444444444");
        // Without a container end time, from its creation (T0).
        assert_eq!(pod_expiry(&build, None, &pushed.pod, &config), at(3600));
        let ended = pushed.finished_at(at(300)).pod;
        assert_eq!(pod_finished_at(&ended), Some(at(300)));
        assert_eq!(pod_expiry(&build, None, &ended, &config), at(3900));
    }

    #[test]
    fn retention_notes_say_when_the_pod_goes() {
        assert_eq!(
            note("app-1", at(3600), Duration::from_secs(3600)),
            "pod app-1 is kept until 2026-01-01T01:00:00Z (retention 1h)"
        );
        assert_eq!(
            note("app-1", T0, Duration::ZERO),
            "pod app-1 is deleted now (retention 0s)"
        );
    }
}
