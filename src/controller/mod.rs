//! The controller that turns `Build` objects into build pods and status.
//!
//! Reconcile is split so that every decision is testable without a cluster:
//!
//! | file | holds | I/O |
//! | --- | --- | --- |
//! | [`decide`](mod@decide) | `decide(build, observed, now, config) -> Plan`: the lifecycle | pure |
//! | [`plan`] | the [`Plan`](plan::Plan) and its [`Action`](plan::Action)s | pure |
//! | [`pod`] | the build pod and ConfigMap of one attempt, and why its security context is what it is | pure |
//! | [`buildkit`] | `buildctl` arguments, BuildKit configuration, cache references | pure |
//! | [`native`] | a `Native` multi-platform attempt: its platform pods and the index pod | pure |
//! | [`platforms`] | which nodes build which platform; platforms no node offers | pure |
//! | [`local_context`] | the `context` init container of a `source.local` Build, and where its upload is kept on the cache | pure |
//! | [`podstate`] | what a pod's status says happened; the pushed digest | pure |
//! | [`queue`] | concurrency groups: who runs, who waits, who is superseded | pure |
//! | [`fair_share`] | running-build limits and the fair queue: which waiting Builds start | pure |
//! | [`validate`] | the checks the schema cannot make | pure |
//! | [`signing`] | the step that signs the pushed image: its container, key mount and arguments | pure |
//! | [`retention`] | how long finished pods are kept, and when they go | pure |
//! | [`cache_lease`] | cache leases of attempts and the finalizer's cache cleanup | pure |
//! | [`cachetoken`] | the Secret that carries an attempt's cache token | pure |
//! | [`gc`] | which leftovers the sweeper deletes, and why | pure |
//! | [`cache_ledger`] | what this process knows of its cache API calls | memory |
//! | [`refusals`] | what the API server said when it refused an attempt's pod | memory |
//! | [`labels`] | labels, selectors and deterministic names | pure |
//! | [`leader_election`] | leader election on a Lease: run while leading, release on shutdown | API (Lease) |
//! | [`observed`] | the [`Observed`](observed::Observed) snapshot `decide` takes, and when to read its inputs | pure |
//! | [`observe`] | reads a Build's world into an [`Observed`](observed::Observed) | API reads |
//! | [`apply`] | carries out a plan | API writes |
//! | [`cachecall`] | the plan's calls to the cache service's admin API | HTTP |
//! | [`sweep`] | the orphan, retention and cache-repository sweeps | both |
//! | [`reconcile`](mod@reconcile) | observe → decide → apply under the group lock; the error policy | both |
//! | [`run`](mod@run) | the watch loop: [`run()`] | both |
//! | [`config`] | controller-wide [`Config`], the cache service and registry mirrors it names | pure |
//! | [`clock`] | where time comes from: the system clock, a manual one for tests | — |
//! | [`observer`] | how a reconcile ended, this replica's role, and their observers | — |
//! | [`group_locks`] | one reconcile at a time per concurrency group | memory |
//! | [`slot_gate`] | one start at a time under running-build limits; starts not yet in the cache | memory |
//! | [`wakeups`] | which Builds a change to one Build wakes, by group index; censuses only when a slot frees | memory |
//! | [`slim`] | what is kept of cached and bulk-listed objects (no managed fields, no pod spec) | pure |
//! | [`pod_index`] | build pods by their Build's UID, from the watch that triggers reconciles | memory |
//! | [`node_labels`] | the nodes' labels, from a watch of their metadata: which platforms a node offers | memory |
//! | [`namespace_limits`] | the running-build limits namespaces set for themselves, as last seen | memory |
//! | [`context`] | the shared [`Context`]: the config beside the client and other handles | — |
//! | [`error`] | one error enum per step | — |
//! | `fixtures` | build pods in every state a kubelet reports, for tests | pure |
//!
//! The `kiln controller` command (flags into a [`Config`], then [`run()`]) is `app::controller`.

pub mod apply;
pub mod base_images;
pub mod build_log;
pub mod buildkit;
pub mod cache_lease;
pub mod cache_ledger;
pub mod cachecall;
pub mod cachetoken;
pub mod clock;
pub mod config;
pub mod context;
pub mod decide;
pub mod error;
pub mod fair_share;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod gc;
pub mod group_locks;
pub mod labels;
pub mod leader_election;
pub mod local_context;
pub mod namespace_limits;
pub mod native;
pub mod node_labels;
pub mod observe;
pub mod observed;
pub mod observer;
pub mod plan;
pub mod platforms;
pub mod pod;
pub mod pod_index;
pub mod podstate;
pub mod queue;
pub mod reconcile;
pub mod refusals;
pub mod retention;
pub mod run;
pub mod signing;
pub mod slim;
pub mod slot_gate;
pub mod sweep;
pub mod validate;
pub mod wakeups;

pub use config::Config;
pub use context::Context;
pub use decide::decide;
pub use reconcile::{error_policy, reconcile};
pub use run::{run, run_with};
