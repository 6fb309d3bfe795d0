//! What `kubectl kiln` prints: the Build table, a Build's status report, disk usage of the
//! cache (pure: data in, text out; time is an argument).
//!
//! Tables are aligned like kubectl's (columns separated by three spaces, `-` for an empty
//! cell), rows come in the order given (callers sort), and every timestamp is shown as an
//! age relative to `now`, so that the same objects and the same `now` print the same text.

use std::fmt::Write;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::controller::labels::PLATFORM_INDEX;
use crate::crd::{Build, BuildStatus, Phase, PlatformStatus};
use crate::table::Table;
use crate::units::format_duration;

/// The time from `from` to `to`, or zero when `to` is earlier.
fn between(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

/// The age of `at` relative to `now`, or empty when unknown.
pub fn age(at: Option<&Time>, now: Timestamp) -> String {
    at.map(|t| format_duration(between(t.0, now)))
        .unwrap_or_default()
}

/// How long the current run took (finished) or has taken so far (still running).
pub fn run_duration(status: &BuildStatus, now: Timestamp) -> Option<Duration> {
    let start = status.start_time.as_ref()?.0;
    let end = match (&status.completion_time, status.phase) {
        (Some(end), Some(phase)) if phase.is_terminal() => end.0,
        _ => now,
    };
    Some(between(start, end))
}

fn phase_text(status: Option<&BuildStatus>) -> String {
    status
        .and_then(|s| s.phase)
        .map(Phase::as_str)
        .unwrap_or("Pending")
        .to_owned()
}

fn reason_text(status: Option<&BuildStatus>) -> String {
    status
        .and_then(|s| s.reason())
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default()
}

/// The table of `kubectl kiln list`: name, phase, reason, platforms pushed (`1/2`, for a
/// Build that builds one pod per platform), attempt, duration, digest, age (and namespace
/// first, with `all_namespaces`).
pub fn build_table(builds: &[Build], all_namespaces: bool, now: Timestamp) -> String {
    let mut table = if all_namespaces {
        Table::new([
            "NAMESPACE",
            "NAME",
            "PHASE",
            "REASON",
            "PLATFORMS",
            "ATTEMPT",
            "DURATION",
            "DIGEST",
            "AGE",
        ])
    } else {
        Table::new([
            "NAME",
            "PHASE",
            "REASON",
            "PLATFORMS",
            "ATTEMPT",
            "DURATION",
            "DIGEST",
            "AGE",
        ])
    };
    for build in builds {
        let status = build.status.as_ref();
        let mut row = Vec::new();
        if all_namespaces {
            row.push(build.namespace().unwrap_or_default());
        }
        row.extend([
            build.name_any(),
            phase_text(status),
            reason_text(status),
            status
                .and_then(|s| s.platform_progress.clone())
                .unwrap_or_default(),
            status
                .map(|s| s.attempt)
                .filter(|a| *a > 0)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            status
                .and_then(|s| run_duration(s, now))
                .map(format_duration)
                .unwrap_or_default(),
            status
                .and_then(|s| s.output.as_ref())
                .map(|o| format!("sha256:{}", o.short_digest))
                .unwrap_or_default(),
            age(build.metadata.creation_timestamp.as_ref(), now),
        ]);
        table.row(row);
    }
    table.render(0)
}

/// Everything `kubectl kiln status` shows about one Build.
#[derive(Clone, Debug, Default)]
pub struct StatusReport {
    /// The Build.
    pub build: Build,
    /// Events about it, oldest first.
    pub events: Vec<Event>,
    /// The last log lines of the current attempt's pod when that attempt failed: the pod
    /// name and the lines (empty when the pod is gone or its log unreadable, with why).
    pub failed_log: Option<FailedLog>,
}

/// The end of a failed attempt's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedLog {
    /// The pod.
    pub pod: String,
    /// Which pod of a native attempt it is: the platform that failed, or `index`; `None`
    /// for a single-pod attempt.
    pub platform: Option<String>,
    /// Its last lines, or why there are none.
    pub lines: Result<Vec<String>, String>,
}

fn field(out: &mut String, name: &str, value: impl AsRef<str>) {
    let value = value.as_ref();
    if !value.is_empty() {
        let _ = writeln!(out, "{:<12}{value}", format!("{name}:"));
    }
}

/// The text of `kubectl kiln status`: summary, conditions, attempts, the platforms of a
/// native attempt, events and, for a failed attempt, the end of its log.
pub fn status_report(report: &StatusReport, now: Timestamp) -> String {
    let build = &report.build;
    let status = build.status.as_ref();
    let mut out = summary(build, now);
    out.push_str("\nConditions:\n");
    out.push_str(&conditions_table(status, now));
    out.push_str("\nAttempts:\n");
    out.push_str(&attempts_table(status, now));
    if let Some(status) = status.filter(|s| !s.platforms.is_empty()) {
        out.push_str("\nPlatforms:\n");
        out.push_str(&platforms_table(&status.platforms, now));
    }
    if let Some(status) = status.filter(|s| !s.base_images.is_empty()) {
        out.push_str("\nBase images:\n");
        out.push_str(&base_images_table(status));
    }
    out.push_str("\nEvents:\n");
    out.push_str(&events_table(&report.events, now));
    if let Some(log) = &report.failed_log {
        let which = match log.platform.as_deref() {
            Some(PLATFORM_INDEX) => " (the image index)".to_owned(),
            Some(platform) => format!(" (platform {platform})"),
            None => String::new(),
        };
        let _ = writeln!(out, "\nLast log lines of pod {}{which}:", log.pod);
        match &log.lines {
            Ok(lines) if lines.is_empty() => out.push_str("  <empty>\n"),
            Ok(lines) => {
                for line in lines {
                    let _ = writeln!(out, "  {line}");
                }
            }
            Err(why) => {
                let _ = writeln!(out, "  <unavailable: {why}>");
            }
        }
    }
    out
}

/// The report's head: name, phase and reason, message, image, digest, generation, attempt,
/// platforms pushed, start and duration, a requested cancel.
fn summary(build: &Build, now: Timestamp) -> String {
    let status = build.status.as_ref();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Build {}/{}",
        build.namespace().unwrap_or_default(),
        build.name_any()
    );
    let reason = reason_text(status);
    let phase = if reason.is_empty() {
        phase_text(status)
    } else {
        format!("{} ({reason})", phase_text(status))
    };
    field(&mut out, "Phase", phase);
    field(
        &mut out,
        "Message",
        status.and_then(|s| s.message.clone()).unwrap_or_default(),
    );
    field(&mut out, "Image", &build.spec.output.image);
    let output = status.and_then(|s| s.output.as_ref());
    field(
        &mut out,
        "Digest",
        output.map(|o| o.digest.clone()).unwrap_or_default(),
    );
    if let Some(output) = output.filter(|o| !o.attestations.is_empty()) {
        field(&mut out, "Attestations", output.attestations.join(", "));
    }
    if let Some(signature) = output.and_then(|o| o.signature.as_deref()) {
        field(&mut out, "Signature", signature);
    }
    let generation = build.metadata.generation.unwrap_or_default();
    let observed = status.and_then(|s| s.observed_generation);
    field(
        &mut out,
        "Generation",
        match observed {
            Some(o) if o == generation => generation.to_string(),
            Some(o) => format!("{generation} (status describes {o})"),
            None => format!("{generation} (not yet seen by the controller)"),
        },
    );
    if let Some(status) = status.filter(|s| s.attempt > 0) {
        field(
            &mut out,
            "Attempt",
            format!(
                "{} ({} of {} retries used)",
                status.attempt, status.retries, build.spec.retries
            ),
        );
    }
    if let Some(progress) = status.and_then(|s| s.platform_progress.as_deref()) {
        field(&mut out, "Platforms", format!("{progress} pushed"));
    }
    if let Some(start) = status.and_then(|s| s.start_time.as_ref()) {
        field(
            &mut out,
            "Started",
            format!("{} ago", age(Some(start), now)),
        );
    }
    if let Some(status) = status
        && let Some(took) = run_duration(status, now)
    {
        let finished = status.phase.is_some_and(Phase::is_terminal);
        field(
            &mut out,
            if finished { "Took" } else { "Running for" },
            format_duration(took),
        );
    }
    if build.spec.cancel {
        field(&mut out, "Cancel", "requested (spec.cancel is true)");
    }
    out
}

/// The conditions as an indented table, or `<none>`.
fn conditions_table(status: Option<&BuildStatus>, now: Timestamp) -> String {
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    if conditions.is_empty() {
        return "  <none>\n".to_owned();
    }
    let mut table = Table::new(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]);
    for c in conditions {
        table.row(vec![
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            age(Some(&c.last_transition_time), now),
            one_line(&c.message),
        ]);
    }
    table.render(2)
}

/// The attempt history as an indented table, or `<none>`.
fn attempts_table(status: Option<&BuildStatus>, now: Timestamp) -> String {
    let attempts = status.map(|s| s.attempts.as_slice()).unwrap_or_default();
    if attempts.is_empty() {
        return "  <none>\n".to_owned();
    }
    let mut table = Table::new([
        "#", "POD", "RESULT", "REASON", "STARTED", "DURATION", "DIGEST", "MESSAGE",
    ]);
    for a in attempts {
        let took = took(&a.start_time, a.completion_time.as_ref(), now);
        table.row(vec![
            a.attempt.to_string(),
            a.pod_name.clone(),
            a.result
                .map(|r| format!("{r:?}"))
                .unwrap_or_else(|| "Running".to_owned()),
            a.reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            format!("{} ago", age(Some(&a.start_time), now)),
            took,
            short_digest(a.digest.as_deref()),
            one_line(a.message.as_deref().unwrap_or_default()),
        ]);
    }
    table.render(2)
}

/// The base images of the latest successful attempt, and the last change that started an
/// attempt (`spec.triggers.baseImageChanged`).
fn base_images_table(status: &BuildStatus) -> String {
    let mut table = Table::new(["IMAGE", "DIGEST"]);
    for base in &status.base_images {
        table.row(vec![base.image.clone(), base.digest.clone()]);
    }
    let mut out = table.render(2);
    if let Some(change) = status
        .base_image_check
        .as_ref()
        .and_then(|c| c.last_trigger.as_ref())
    {
        let _ = writeln!(
            out,
            "  {} moved from {} to {}: attempt {} rebuilt on it",
            change.image,
            short_digest(Some(&change.from)),
            short_digest(Some(&change.to)),
            change.attempt
        );
    }
    out
}

/// How long something that started at `start` took, or has taken so far.
fn took(start: &Time, end: Option<&Time>, now: Timestamp) -> String {
    match end {
        Some(end) => format_duration(between(start.0, end.0)),
        None => format!("{} so far", format_duration(between(start.0, now))),
    }
}

/// `sha256:` and the first 12 hex characters of a digest (the 12 of
/// `status.output.shortDigest`): enough to tell digests apart in a table.
fn short_digest(digest: Option<&str>) -> String {
    digest
        .map(|d| d.chars().take("sha256:".len() + 12).collect())
        .unwrap_or_default()
}

/// The platforms of a native attempt as an indented table, in the order of the status
/// (that of `spec.platforms`). A platform waiting for its pod, or for a retry's pod, has
/// no start time yet: its STARTED and DURATION are empty.
fn platforms_table(platforms: &[PlatformStatus], now: Timestamp) -> String {
    let mut table = Table::new([
        "PLATFORM", "PHASE", "REASON", "RETRIES", "POD", "DIGEST", "STARTED", "DURATION",
    ]);
    for p in platforms {
        let (started, took) = match &p.start_time {
            Some(start) => (
                format!("{} ago", age(Some(start), now)),
                took(start, p.completion_time.as_ref(), now),
            ),
            None => (String::new(), String::new()),
        };
        table.row(vec![
            p.platform.clone(),
            p.phase.as_str().to_owned(),
            p.reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            p.retries.to_string(),
            p.pod_name.clone(),
            short_digest(p.digest.as_deref()),
            started,
            took,
        ]);
    }
    table.render(2)
}

/// The Build's Events as an indented table, or `<none>`.
fn events_table(events: &[Event], now: Timestamp) -> String {
    if events.is_empty() {
        return "  <none>\n".to_owned();
    }
    let mut table = Table::new(["AGE", "TYPE", "REASON", "MESSAGE"]);
    for e in events {
        let at = e
            .last_timestamp
            .clone()
            .or_else(|| e.first_timestamp.clone())
            .or_else(|| e.event_time.as_ref().map(|t| Time(t.0)))
            .or_else(|| e.metadata.creation_timestamp.clone());
        table.row(vec![
            age(at.as_ref(), now),
            e.type_.clone().unwrap_or_default(),
            e.reason.clone().unwrap_or_default(),
            one_line(e.message.as_deref().unwrap_or_default()),
        ]);
    }
    table.render(2)
}

/// The first line of `text`, marked with `…` when more follows.
fn one_line(text: &str) -> String {
    let mut lines = text.trim().lines();
    let first = lines.next().unwrap_or_default().to_owned();
    if lines.next().is_some() {
        format!("{first} …")
    } else {
        first
    }
}

/// The last `count` lines of `log`.
pub fn tail(log: &str, count: usize) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(count)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::crd::condition::set_condition;
    use crate::crd::fixtures::at;
    use crate::crd::{
        AttemptRecord, AttemptResult, CONDITION_READY, CONDITION_SUCCEEDED, ConditionStatus,
        OutputStatus, Reason,
    };

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn finished(name: &str, reason: Reason, phase: Phase) -> Build {
        let mut status = BuildStatus {
            phase: Some(phase),
            observed_generation: Some(1),
            attempt: 2,
            retries: 1,
            start_time: Some(Time(at(10))),
            completion_time: Some(Time(at(100))),
            ..BuildStatus::default()
        };
        let (succeeded, ready) = match phase {
            Phase::Succeeded => (ConditionStatus::True, ConditionStatus::True),
            _ => (ConditionStatus::False, ConditionStatus::False),
        };
        set_condition(
            &mut status.conditions,
            CONDITION_SUCCEEDED,
            succeeded,
            reason,
            "what happened\nand more",
            Some(1),
            at(100),
        );
        set_condition(
            &mut status.conditions,
            CONDITION_READY,
            ready,
            reason,
            "",
            Some(1),
            at(100),
        );
        let record =
            |attempt: u32, start: i64, result, reason, message: Option<&str>| AttemptRecord {
                attempt,
                pod_name: format!("{name}-{attempt}"),
                pod_uid: None,
                generation: 1,
                start_time: Time(at(start)),
                completion_time: Some(Time(at(start + 30 + 20 * i64::from(attempt - 1)))),
                result: Some(result),
                reason: Some(reason),
                message: message.map(str::to_owned),
                digest: (result == AttemptResult::Succeeded).then(|| DIGEST.to_owned()),
                pod_retained_until: None,
                log: None,
            };
        let last = if phase == Phase::Succeeded {
            AttemptResult::Succeeded
        } else {
            AttemptResult::Failed
        };
        status.attempts = vec![
            record(
                1,
                10,
                AttemptResult::Failed,
                Reason::PodEvicted,
                Some("The node was low on memory."),
            ),
            record(2, 50, last, reason, None),
        ];
        if phase == Phase::Succeeded {
            status.output = Some(OutputStatus {
                image: "registry.example.com/team/app:latest".into(),
                digest: DIGEST.into(),
                short_digest: "0123456789ab".into(),
                ..OutputStatus::default()
            });
        }
        Build::test(name).with_status(status)
    }

    #[test]
    fn the_list_table_is_aligned_and_shows_phase_platforms_attempt_duration_and_digest() {
        let mut running = Build::test("slow").with_status(BuildStatus {
            phase: Some(Phase::Running),
            attempt: 1,
            start_time: Some(Time(at(0))),
            ..BuildStatus::default()
        });
        running.metadata.namespace = Some("team-b".into());
        let multi = Build::test("multi").with_status(BuildStatus {
            phase: Some(Phase::Failed),
            attempt: 1,
            start_time: Some(Time(at(0))),
            completion_time: Some(Time(at(100))),
            platform_progress: Some("1/2".into()),
            ..BuildStatus::default()
        });
        let builds = vec![
            finished("app", Reason::Succeeded, Phase::Succeeded),
            multi,
            Build::test("new"),
            running,
        ];
        assert_eq!(
            build_table(&builds, false, at(400)),
            "\
NAME    PHASE       REASON      PLATFORMS   ATTEMPT   DURATION   DIGEST                AGE
app     Succeeded   Succeeded   -           2         1m30s      sha256:0123456789ab   6m40s
multi   Failed      -           1/2         1         1m40s      -                     6m40s
new     Pending     -           -           -         -          -                     6m40s
slow    Running     -           -           1         6m40s      -                     6m40s
"
        );
        let all = build_table(&builds, true, at(400));
        assert!(all.starts_with("NAMESPACE   NAME"), "{all}");
        assert!(all.contains("\nteam-b      slow "), "{all}");
    }

    #[test]
    fn the_status_report_names_the_attestations_and_the_signature() {
        let mut build = finished("app", Reason::Succeeded, Phase::Succeeded);
        let report = |build: Build| {
            status_report(
                &StatusReport {
                    build,
                    events: Vec::new(),
                    failed_log: None,
                },
                at(160),
            )
        };
        let plain = report(build.clone());
        assert!(!plain.contains("Attestations:"), "{plain}");
        assert!(!plain.contains("Signature:"), "{plain}");
        if let Some(output) = build.status.as_mut().and_then(|s| s.output.as_mut()) {
            output.attestations = vec!["provenance".into(), "sbom".into()];
            output.signature = Some("registry.example.com/team/app:sha256-0123.sig".into());
        }
        let text = report(build);
        assert!(text.contains("Attestations:"), "{text}");
        assert!(text.contains("provenance, sbom\n"), "{text}");
        assert!(
            text.contains("registry.example.com/team/app:sha256-0123.sig\n"),
            "{text}"
        );
    }

    #[test]
    fn the_status_report_lists_the_base_images_and_the_change_that_rebuilt() {
        let mut build = finished("app", Reason::Succeeded, Phase::Succeeded);
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        if let Some(status) = build.status.as_mut() {
            status.base_images = vec![crate::crd::BaseImage {
                image: "docker.io/library/alpine:3.20".into(),
                digest: digest('b'),
            }];
            status.base_image_check = Some(crate::crd::BaseImageCheck {
                attempt: 2,
                checked_at: None,
                last_trigger: Some(crate::crd::BaseImageChange {
                    image: "docker.io/library/alpine:3.20".into(),
                    from: digest('a'),
                    to: digest('b'),
                    attempt: 2,
                }),
            });
        }
        let report = StatusReport {
            build,
            events: Vec::new(),
            failed_log: None,
        };
        let text = status_report(&report, at(160));
        let section = text
            .split_once("Base images:\n")
            .and_then(|(_, rest)| rest.split_once("\nEvents:"))
            .map(|(section, _)| section)
            .expect("a base images section before the Events");
        assert_eq!(
            section,
            format!(
                "  IMAGE                           DIGEST\n  docker.io/library/alpine:3.20   {}\n  docker.io/library/alpine:3.20 moved from sha256:aaaaaaaaaaaa to sha256:bbbbbbbbbbbb: attempt 2 rebuilt on it\n",
                digest('b')
            )
        );
        // Without base images, no section.
        let plain = finished("app", Reason::Succeeded, Phase::Succeeded);
        let text = status_report(
            &StatusReport {
                build: plain,
                events: Vec::new(),
                failed_log: None,
            },
            at(160),
        );
        assert!(!text.contains("Base images"));
    }

    #[test]
    fn the_status_report_shows_conditions_attempts_events_and_the_failed_log() {
        let build = finished("app", Reason::BuildFailed, Phase::Failed);
        let event = Event {
            metadata: ObjectMeta::default(),
            type_: Some("Warning".into()),
            reason: Some("BuildFailed".into()),
            message: Some("RUN make exited with 2".into()),
            last_timestamp: Some(Time(at(100))),
            ..Event::default()
        };
        let report = StatusReport {
            build,
            events: vec![event],
            failed_log: Some(FailedLog {
                pod: "app-2".into(),
                platform: None,
                lines: Ok(vec!["#7 ERROR: process \"make\" did not complete".into()]),
            }),
        };
        let text = status_report(&report, at(160));
        assert_eq!(
            text,
            "\
Build default/app
Phase:      Failed (BuildFailed)
Image:      registry.example.com/team/app:latest
Generation: 1
Attempt:    2 (1 of 2 retries used)
Started:    2m30s ago
Took:       1m30s

Conditions:
  TYPE        STATUS   REASON        AGE   MESSAGE
  Ready       False    BuildFailed   1m    -
  Succeeded   False    BuildFailed   1m    what happened …

Attempts:
  #   POD     RESULT   REASON        STARTED     DURATION   DIGEST   MESSAGE
  1   app-1   Failed   PodEvicted    2m30s ago   30s        -        The node was low on memory.
  2   app-2   Failed   BuildFailed   1m50s ago   50s        -        -

Events:
  AGE   TYPE      REASON        MESSAGE
  1m    Warning   BuildFailed   RUN make exited with 2

Last log lines of pod app-2:
  #7 ERROR: process \"make\" did not complete
"
        );
    }

    /// A native attempt whose arm64 platform failed after a retry: linux/amd64 pushed.
    fn native_failed() -> Build {
        let mut status = BuildStatus {
            phase: Some(Phase::Failed),
            observed_generation: Some(1),
            attempt: 1,
            start_time: Some(Time(at(10))),
            completion_time: Some(Time(at(100))),
            platform_progress: Some("1/2".into()),
            ..BuildStatus::default()
        };
        set_condition(
            &mut status.conditions,
            CONDITION_SUCCEEDED,
            ConditionStatus::False,
            Reason::BuildFailed,
            "attempt 1: platform linux/arm64 failed: RUN make exited with 2",
            Some(1),
            at(100),
        );
        status.attempts = vec![AttemptRecord {
            attempt: 1,
            pod_name: "app-1-index".into(),
            pod_uid: None,
            generation: 1,
            start_time: Time(at(10)),
            completion_time: Some(Time(at(100))),
            result: Some(AttemptResult::Failed),
            reason: Some(Reason::BuildFailed),
            message: None,
            digest: None,
            pod_retained_until: None,
            log: None,
        }];
        let platform = |name: &str, phase, reason, pod: &str| PlatformStatus {
            platform: name.into(),
            attempt: 1,
            phase,
            pod_name: pod.into(),
            pod_uid: Some(format!("uid-{pod}")),
            retries: 0,
            start_time: Some(Time(at(10))),
            completion_time: Some(Time(at(70))),
            reason: Some(reason),
            message: None,
            digest: None,
        };
        status.platforms = vec![
            PlatformStatus {
                digest: Some(DIGEST.into()),
                ..platform(
                    "linux/amd64",
                    Phase::Succeeded,
                    Reason::Succeeded,
                    "app-1-linux-amd64",
                )
            },
            PlatformStatus {
                retries: 1,
                start_time: Some(Time(at(40))),
                completion_time: Some(Time(at(100))),
                ..platform(
                    "linux/arm64",
                    Phase::Failed,
                    Reason::BuildFailed,
                    "app-1-linux-arm64-2",
                )
            },
        ];
        Build::test("app")
            .platform("linux/amd64")
            .platform("linux/arm64")
            .with_status(status)
    }

    #[test]
    fn the_status_of_a_native_build_shows_its_platforms_progress_and_the_failed_platforms_log() {
        let report = StatusReport {
            build: native_failed(),
            events: Vec::new(),
            failed_log: Some(FailedLog {
                pod: "app-1-linux-arm64-2".into(),
                platform: Some("linux/arm64".into()),
                lines: Ok(vec!["#9 ERROR: make exited with 2".into()]),
            }),
        };
        assert_eq!(
            status_report(&report, at(160)),
            "\
Build default/app
Phase:      Failed (BuildFailed)
Image:      registry.example.com/team/app:latest
Generation: 1
Attempt:    1 (0 of 2 retries used)
Platforms:  1/2 pushed
Started:    2m30s ago
Took:       1m30s

Conditions:
  TYPE        STATUS   REASON        AGE   MESSAGE
  Succeeded   False    BuildFailed   1m    attempt 1: platform linux/arm64 failed: RUN make exited with 2

Attempts:
  #   POD           RESULT   REASON        STARTED     DURATION   DIGEST   MESSAGE
  1   app-1-index   Failed   BuildFailed   2m30s ago   1m30s      -        -

Platforms:
  PLATFORM      PHASE       REASON        RETRIES   POD                   DIGEST                STARTED     DURATION
  linux/amd64   Succeeded   Succeeded     0         app-1-linux-amd64     sha256:0123456789ab   2m30s ago   1m
  linux/arm64   Failed      BuildFailed   1         app-1-linux-arm64-2   -                     2m ago      1m

Events:
  <none>

Last log lines of pod app-1-linux-arm64-2 (platform linux/arm64):
  #9 ERROR: make exited with 2
"
        );
    }

    #[test]
    fn a_platform_waiting_for_its_pod_has_no_start_and_a_running_one_counts_so_far() {
        let mut build = native_failed();
        let status = build.status.as_mut().unwrap();
        status.platforms[0].completion_time = None;
        status.platforms[0].phase = Phase::Running;
        status.platforms[1].start_time = None;
        status.platforms[1].phase = Phase::Pending;
        let report = StatusReport {
            build,
            events: Vec::new(),
            failed_log: Some(FailedLog {
                pod: "app-1-index".into(),
                platform: Some("index".into()),
                lines: Ok(Vec::new()),
            }),
        };
        let text = status_report(&report, at(160));
        assert!(
            text.contains("  linux/amd64   Running   Succeeded     0         app-1-linux-amd64     sha256:0123456789ab   2m30s ago   2m30s so far\n"),
            "{text}"
        );
        assert!(
            text.contains("  linux/arm64   Pending   BuildFailed   1         app-1-linux-arm64-2   -                     -           -\n"),
            "{text}"
        );
        assert!(
            text.contains("Last log lines of pod app-1-index (the image index):\n  <empty>\n"),
            "{text}"
        );
    }

    #[test]
    fn a_single_pod_build_has_no_platforms_table_or_progress() {
        let report = StatusReport {
            build: finished("app", Reason::Succeeded, Phase::Succeeded),
            ..StatusReport::default()
        };
        let text = status_report(&report, at(160));
        assert!(!text.contains("Platforms"), "{text}");
    }

    #[test]
    fn a_status_without_anything_says_none_and_a_missing_log_says_why() {
        let report = StatusReport {
            build: Build::test("fresh").generation(3),
            events: Vec::new(),
            failed_log: Some(FailedLog {
                pod: "fresh-1".into(),
                platform: None,
                lines: Err("pod fresh-1 is gone".into()),
            }),
        };
        let text = status_report(&report, at(5));
        assert!(text.contains("Phase:      Pending\n"), "{text}");
        assert!(
            text.contains("Generation: 3 (not yet seen by the controller)"),
            "{text}"
        );
        assert!(text.contains("Conditions:\n  <none>\n"), "{text}");
        assert!(text.contains("Attempts:\n  <none>\n"), "{text}");
        assert!(text.contains("Events:\n  <none>\n"), "{text}");
        assert!(
            text.contains("  <unavailable: pod fresh-1 is gone>"),
            "{text}"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(tail("a", 5), ["a"]);
        assert!(tail("", 3).is_empty());
    }
}
