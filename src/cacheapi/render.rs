//! The one text form of the cache's reports (disk usage, prune, verify) that every command
//! prints: `kiln cache du|prune|verify` on a directory or `--server`, and `kubectl kiln
//! cache du` (pure: report in, text out; the time is an argument).

use std::time::Duration;

use crate::cacheapi::admin::{DuReport, PruneReport, VerifyReport};
use crate::table::Table;
use crate::units::{format_duration, format_size};

/// Disk usage: totals, then one row per repository (in the order given: sorted by name).
/// `now_secs` is the time the ages are measured to (seconds since the Unix epoch).
pub fn du(report: &DuReport, now_secs: u64) -> String {
    let mut out = format!(
        "Total:        {} in {} blobs ({} manifests, {} tags)\nReclaimable:  {}\nUploads:      {} in progress ({})\nLeases:       {}\n\n",
        format_size(report.total_bytes),
        report.blobs.count,
        report.manifests,
        report.tags,
        format_size(report.reclaimable_bytes),
        report.uploads.count,
        format_size(report.uploads.bytes),
        report.leases,
    );
    let mut table = Table::new([
        "REPOSITORY",
        "TAGS",
        "MANIFESTS",
        "SIZE",
        "LAST USED",
        "MIRROR",
    ]);
    for repo in &report.repositories {
        table.row(vec![
            repo.name.to_string(),
            repo.tags.to_string(),
            repo.manifests.to_string(),
            format_size(repo.bytes),
            repo.last_used
                .map(|at| {
                    let ago = Duration::from_secs(now_secs.saturating_sub(at));
                    format!("{} ago", format_duration(ago))
                })
                .unwrap_or_default(),
            if repo.mirror { "yes" } else { "no" }.to_owned(),
        ]);
    }
    if table.is_empty() {
        out.push_str("No repositories.\n");
    } else {
        out.push_str(&table.render(0));
    }
    out
}

/// Formats a prune report: one line per removed entry, then the bytes freed.
pub fn prune(report: &PruneReport) -> String {
    let mut out = String::new();
    for entry in &report.removed {
        let name = match (&entry.repository, &entry.tag, &entry.digest) {
            (Some(repo), Some(tag), _) => format!("{repo}:{tag}"),
            (_, _, Some(digest)) => digest.to_string(),
            (Some(repo), None, None) => repo.to_string(),
            (None, _, None) => String::new(),
        };
        out.push_str(&format!(
            "{:<9}{:<72}{:>10}  {}\n",
            format!("{:?}", entry.kind).to_lowercase(),
            name,
            format_size(entry.bytes),
            entry.reason
        ));
    }
    out.push_str(&format!(
        "{}:\t{} ({} entries; {} digests held by leases)\n",
        if report.dry_run {
            "Would free"
        } else {
            "Freed"
        },
        format_size(report.freed_bytes),
        report.removed.len(),
        report.kept_by_leases
    ));
    if let Some(unmet) = &report.ceiling_unmet {
        out.push_str(&ceiling_note(
            unmet.bytes_after,
            unmet.held_by_leases,
            unmet.held_by_pushes,
        ));
    }
    out
}

/// The line that says why a `keep-storage` ceiling was not met, and by how much each
/// reason holds.
pub fn ceiling_note(bytes_after: u64, held_by_leases: u64, held_by_pushes: u64) -> String {
    format!(
        "Note:\t\t--keep-storage not met: {} left, of which leases hold {} and pushes in progress (pushed or checked within the grace window, no tag yet) {}\n",
        format_size(bytes_after),
        format_size(held_by_leases),
        format_size(held_by_pushes),
    )
}

/// Formats a verify report: one line per finding, then a summary.
pub fn verify(report: &VerifyReport) -> String {
    let mut out = String::new();
    for corrupt in &report.corrupt {
        out.push_str(&format!(
            "corrupt: {} hashes to {} ({}){}\n",
            corrupt.digest,
            corrupt.actual,
            format_size(corrupt.bytes),
            if corrupt.quarantined {
                ", quarantined"
            } else {
                ""
            }
        ));
    }
    for missing in &report.missing {
        out.push_str(&format!(
            "missing: {}@{} references {}\n",
            missing.repository, missing.manifest, missing.missing
        ));
    }
    for problem in &report.problems {
        out.push_str(&format!("problem: {problem}\n"));
    }
    for path in &report.quarantined {
        out.push_str(&format!("quarantined: {path}\n"));
    }
    for digest in &report.repaired {
        out.push_str(&format!("dropped: {digest}\n"));
    }
    let findings = report.corrupt.len() + report.missing.len() + report.problems.len();
    let verdict = match (findings, report.repaired.is_empty()) {
        (0, _) => "clean".to_owned(),
        (n, false) => format!("{n} problems, repaired"),
        (n, true) => format!("{n} problems (run with --repair to fix)"),
    };
    out.push_str(&format!(
        "Checked {} blobs ({}): {verdict}\n",
        report.blobs_checked,
        format_size(report.bytes_checked)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cacheapi::admin::{CorruptBlob, EntryKind, PrunedEntry, RepositoryUsage, Usage};
    use crate::oci::digest::Digest;
    use crate::oci::name::{RepoName, Tag};

    #[test]
    fn du_shows_totals_and_repositories() {
        let report = DuReport {
            total_bytes: 2_500_000,
            reclaimable_bytes: 1_000,
            blobs: Usage {
                count: 7,
                bytes: 2_500_000,
            },
            manifests: 3,
            tags: 2,
            uploads: Usage::default(),
            leases: 1,
            repositories: vec![RepositoryUsage {
                name: "team-a/app".parse().unwrap(),
                tags: 2,
                manifests: 3,
                bytes: 2_500_000,
                last_used: Some(0),
                mirror: false,
            }],
        };
        assert_eq!(
            du(&report, 90),
            "\
Total:        2.50MB in 7 blobs (3 manifests, 2 tags)
Reclaimable:  1.00kB
Uploads:      0 in progress (0B)
Leases:       1

REPOSITORY   TAGS   MANIFESTS   SIZE     LAST USED   MIRROR
team-a/app   2      3           2.50MB   1m30s ago   no
"
        );
        assert!(du(&DuReport::default(), 0).ends_with("No repositories.\n"));
    }

    #[test]
    fn prune_and_verify_print_one_line_per_finding() {
        let pruned = PruneReport {
            dry_run: true,
            freed_bytes: 10,
            removed: vec![PrunedEntry {
                kind: EntryKind::Tag,
                repository: Some(RepoName::parse("a").unwrap()),
                tag: Some(Tag::parse("v1").unwrap()),
                digest: None,
                bytes: 0,
                reason: "prune-all".into(),
            }],
            kept_by_leases: 0,
            ceiling_unmet: None,
        };
        let text = prune(&pruned);
        assert!(text.starts_with("tag      a:v1"), "{text}");
        assert!(text.contains("Would free"), "{text}");
        let verified = VerifyReport {
            corrupt: vec![CorruptBlob {
                digest: Digest::of(b"a"),
                actual: Digest::of(b"b"),
                bytes: 1,
                quarantined: false,
            }],
            problems: vec!["orphan".into()],
            ..VerifyReport::default()
        };
        let text = verify(&verified);
        assert!(
            text.contains("corrupt: ") && text.contains("problem: orphan"),
            "{text}"
        );
        assert!(
            text.contains("2 problems (run with --repair to fix)"),
            "{text}"
        );
    }
}
