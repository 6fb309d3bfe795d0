//! The API server's audit log, read back for tests (reads a file; parsing is pure): who
//! wrote what, e.g. to count status writes per build.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Audit only writes, at the Metadata level: enough to count API writes per actor and
/// resource (e.g. status writes per build) without the cost of logging reads and bodies.
pub const POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
";

/// The completed events of the JSON-lines audit log at `path`, in order; none when it
/// does not exist (yet).
pub fn read(path: &Path) -> Vec<AuditEvent> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| parse(&line))
        .collect()
}

/// One line of the log, when it is a completed event.
pub fn parse(line: &str) -> Option<AuditEvent> {
    serde_json::from_str::<RawAuditEvent>(line)
        .ok()
        .filter(|raw| raw.stage == "ResponseComplete")
        .map(AuditEvent::from)
}

/// One audited write: who did what to which object, and the response code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// `create`, `update`, `patch`, `delete` or `deletecollection`.
    pub verb: String,
    /// The authenticated user (the impersonated one when impersonating).
    pub user: String,
    /// The resource, e.g. `pods`.
    pub resource: String,
    /// The subresource, e.g. `status` or `binding`; empty for the object itself.
    pub subresource: String,
    /// The API group; empty for the core group.
    pub api_group: String,
    /// The namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// The object's name; empty for a create without a name in the URL.
    pub name: String,
    /// The HTTP status code of the response.
    pub code: u16,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAuditEvent {
    stage: String,
    verb: String,
    user: RawUser,
    #[serde(default)]
    impersonated_user: Option<RawUser>,
    #[serde(default)]
    object_ref: Option<RawObjectRef>,
    #[serde(default)]
    response_status: Option<RawResponseStatus>,
}

#[derive(serde::Deserialize)]
struct RawUser {
    #[serde(default)]
    username: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawObjectRef {
    resource: String,
    subresource: String,
    api_group: String,
    namespace: String,
    name: String,
}

#[derive(serde::Deserialize)]
struct RawResponseStatus {
    #[serde(default)]
    code: u16,
}

impl From<RawAuditEvent> for AuditEvent {
    fn from(raw: RawAuditEvent) -> Self {
        let object = raw.object_ref.unwrap_or_default();
        Self {
            verb: raw.verb,
            user: raw.impersonated_user.unwrap_or(raw.user).username,
            resource: object.resource,
            subresource: object.subresource,
            api_group: object.api_group,
            namespace: object.namespace,
            name: object.name,
            code: raw.response_status.map_or(0, |status| status.code),
        }
    }
}
