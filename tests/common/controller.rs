//! The real controller, in-process, against a real API server (test code; does I/O): start
//! it with its real watches, stop it through its shutdown future, record how its reconciles
//! ended, and give it an identity of its own so that the audit log tells its writes from
//! the test's and the test kubelet's.
//!
//! ```ignore
//! let identity = Identity::superuser(cp, "kiln-controller");
//! let controller = RunningController::start(&identity, fast_config(&ns), &outcomes, None);
//! // ... the scenario ...
//! controller.stop().await; // panics if it did not stop cleanly
//! ```
//!
//! A scenario that must prove the controller's RBAC is enough builds its identity with
//! [`Identity::service_account`] from the RBAC YAML it ships instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kiln::cacheapi::token::TokenKey;
use kiln::controller::observer::{Outcome, ReconcileObserver};
use kiln::controller::{Config, Context};
use kiln::crd::Build;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;

use super::cluster;
use super::envtest::ControlPlane;

/// How long a stopping controller may take to finish its reconciles in flight.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Who the controller acts as: its client and the user name the audit log shows.
#[derive(Clone)]
pub struct Identity {
    /// The controller's client.
    pub client: Client,
    /// The user the API server authenticates it as.
    pub user: String,
}

impl Identity {
    /// The admin impersonating `user` in group `system:masters`: allowed everything, and
    /// still told apart from the test's own (admin) writes in the audit log.
    pub fn superuser(cp: &ControlPlane, user: &str) -> Self {
        Self {
            client: cp.client_impersonating(user, &["system:masters"]),
            user: user.to_owned(),
        }
    }

    /// The ServiceAccount `namespace/name`, after applying `rbac_yaml` (the ServiceAccount,
    /// its Roles and bindings, as a chart renders them) with `admin`, and waiting until the
    /// authorizer lets it list Builds. Exactly the RBAC of that YAML applies to it.
    pub async fn service_account(
        cp: &ControlPlane,
        admin: &Client,
        rbac_yaml: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        cluster::apply_yaml(admin, rbac_yaml, Some(namespace))
            .await
            .unwrap_or_else(|err| panic!("applying the controller's RBAC: {err}"));
        let client = cp.client_as_service_account(namespace, name);
        // The authorizer learns of new bindings through its informers: wait for them.
        cluster::wait_until(
            "the controller's RBAC to take effect",
            Duration::from_secs(30),
            || async { can_list_builds(&client).await.then_some(()) },
        )
        .await;
        Self {
            client,
            user: format!("system:serviceaccount:{namespace}:{name}"),
        }
    }
}

/// Whether the client may list Builds in every namespace (a SelfSubjectAccessReview).
async fn can_list_builds(client: &Client) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(kiln::crd::build::GROUP.to_owned()),
                resource: Some("builds".to_owned()),
                verb: Some("list".to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .ok()
        .and_then(|review| review.status)
        .is_some_and(|status| status.allowed)
}

/// Controller settings that let a scenario run in seconds: the production defaults, but
/// one namespace, a two-second retry backoff, a one-second grace period and a two-second
/// queue re-check. The backoff is two seconds, not one, because the controller never
/// requeues sooner than a second: a backoff cut short (by the whole-second times the API
/// server keeps) shows only above that.
pub fn fast_config(namespace: &str) -> Config {
    Config {
        namespace: Some(namespace.to_owned()),
        retry_backoff: Duration::from_secs(2),
        retry_backoff_max: Duration::from_secs(4),
        pod_grace_period: Duration::from_secs(1),
        queue_recheck: Duration::from_secs(2),
        concurrency: 4,
        instance: Some("scenario-test".to_owned()),
        // Small pages, so that the sweeps' paged lists meet a real API server's continue
        // tokens.
        list_page: Some(3),
        ..Config::default()
    }
}

/// How the reconciles of each Build ended, as the controller reported them.
#[derive(Clone, Default)]
pub struct Outcomes(Arc<Mutex<BTreeMap<String, Vec<Outcome>>>>);

impl Outcomes {
    /// The outcomes of the Build `name`, in order.
    pub fn of(&self, name: &str) -> Vec<Outcome> {
        self.lock().get(name).cloned().unwrap_or_default()
    }

    /// Every failed reconcile: `(build, step)`.
    pub fn failures(&self) -> Vec<(String, &'static str)> {
        self.lock()
            .iter()
            .flat_map(|(name, outcomes)| {
                outcomes.iter().filter_map(move |outcome| match outcome {
                    Outcome::Failed { step } => Some((name.clone(), *step)),
                    _ => None,
                })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Outcome>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ReconcileObserver for Outcomes {
    fn reconciled(&self, build: &ObjectRef<Build>, outcome: Outcome, _: Duration) {
        self.lock()
            .entry(build.name.clone())
            .or_default()
            .push(outcome);
    }
}

/// The controller running on the test's runtime, until [`RunningController::stop`] (or
/// drop, which aborts it).
pub struct RunningController {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), kiln::controller::error::RunError>>,
}

impl RunningController {
    /// Starts `kiln::controller::run_with` as `identity`, reporting to `outcomes`; with
    /// `token_key`, minting the cache tokens of Builds with a cache (`--cache-token-key-file`).
    pub fn start(
        identity: &Identity,
        config: Config,
        outcomes: &Outcomes,
        token_key: Option<&TokenKey>,
    ) -> Self {
        Self::start_with(identity, config, outcomes, |context| match token_key {
            Some(key) => context.with_token_key(key.clone()),
            None => context,
        })
    }

    /// [`RunningController::start`], with `setup` adding to the context (a token key, the
    /// cache's admin client).
    pub fn start_with(
        identity: &Identity,
        config: Config,
        outcomes: &Outcomes,
        setup: impl FnOnce(Context) -> Context,
    ) -> Self {
        let context = setup(
            Context::new(identity.client.clone(), config).with_observer(Arc::new(outcomes.clone())),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(kiln::controller::run_with(context, async move {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for the controller to return; panics unless it returns
    /// `Ok` within [`STOP_TIMEOUT`].
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(STOP_TIMEOUT, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => panic!("the controller failed: {err}"),
            Ok(Err(err)) => panic!("the controller task failed: {err}"),
            Err(_) => panic!("the controller did not stop within {STOP_TIMEOUT:?}"),
        }
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a namespace went through, as its watches told it: each Build's states in order, and
/// each pod's life, with the moment the watch event arrived. A task of its own records it
/// from the start of a scenario to its end, so that an invariant is checked at every step,
/// not only when the test looks.
pub struct Timeline {
    task: tokio::task::JoinHandle<()>,
    state: Arc<Mutex<TimelineState>>,
}

/// One pod's life as the watch saw it.
#[derive(Clone, Debug)]
pub struct PodLife {
    /// The Build it belongs to (its `kiln.dev/build` label).
    pub build: String,
    /// When it was first seen.
    pub created: tokio::time::Instant,
    /// When it was first seen Succeeded or Failed.
    pub ended: Option<tokio::time::Instant>,
    /// When it was deleted.
    pub gone: Option<tokio::time::Instant>,
    /// Its UID.
    pub uid: String,
}

#[derive(Default)]
struct TimelineState {
    /// Build name → its distinct states, `Phase/Reason attempt=N`, in order.
    builds: BTreeMap<String, Vec<String>>,
    /// Pod name → its life (the latest pod of that name).
    pods: BTreeMap<String, PodLife>,
    /// Live pods (neither Succeeded nor Failed, not yet deleted): pod → Build.
    live: BTreeMap<String, String>,
    /// The most live pods seen at once in the namespace, and which.
    peak_total: Vec<String>,
    /// The most live pods seen at once for one Build, and which.
    peak_per_build: Vec<String>,
    /// Watch errors.
    errors: Vec<String>,
}

impl Timeline {
    /// Starts recording the Builds and the Kiln pods of `namespace`; returns once both
    /// watches have listed what exists.
    pub async fn start(client: &Client, namespace: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        use kube::runtime::watcher::{self, Event};

        let state = Arc::new(Mutex::new(TimelineState::default()));
        let builds = kube::runtime::watcher(
            Api::<Build>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|event| event.map(|build| Change::Build(Box::new(build))))
        .boxed();
        let pods = kube::runtime::watcher(
            Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), namespace),
            watcher::Config::default().labels(super::kubelet::SELECTOR),
        )
        .default_backoff()
        .map(|event| event.map(|pod| Change::Pod(Box::new(pod))))
        .boxed();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let recorder = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut initialised = 0;
            let mut events = futures::stream::select(builds, pods);
            while let Some(event) = events.next().await {
                let mut state = lock(&recorder);
                let listed = match event {
                    Ok(Change::Build(event)) => match *event {
                        Event::Apply(build) | Event::InitApply(build) => {
                            state.build_changed(&build);
                            false
                        }
                        Event::InitDone => true,
                        Event::Delete(_) | Event::Init => false,
                    },
                    Ok(Change::Pod(event)) => match *event {
                        Event::Apply(pod) | Event::InitApply(pod) => {
                            state.pod_changed(&pod, false);
                            false
                        }
                        Event::Delete(pod) => {
                            state.pod_changed(&pod, true);
                            false
                        }
                        Event::InitDone => true,
                        Event::Init => false,
                    },
                    Err(err) => {
                        state.errors.push(err.to_string());
                        false
                    }
                };
                if listed {
                    initialised += 1;
                    if initialised == 2
                        && let Some(ready) = ready.take()
                    {
                        let _ = ready.send(());
                    }
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
        Self { task, state }
    }

    /// The distinct states of Build `name`, `Phase/Reason attempt=N`, in order.
    pub fn states(&self, name: &str) -> Vec<String> {
        lock(&self.state)
            .builds
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// The life of the pod `name`.
    pub fn pod(&self, name: &str) -> Option<PodLife> {
        lock(&self.state).pods.get(name).cloned()
    }

    /// The names of every pod seen, sorted.
    pub fn pod_names(&self) -> Vec<String> {
        lock(&self.state).pods.keys().cloned().collect()
    }

    /// The most pods that were live at once in the namespace (sorted names).
    pub fn peak_live_in_namespace(&self) -> Vec<String> {
        lock(&self.state).peak_total.clone()
    }

    /// The most pods of one Build that were live at once (sorted names).
    pub fn peak_live_per_build(&self) -> Vec<String> {
        lock(&self.state).peak_per_build.clone()
    }

    /// Errors of its watches (they retry; a test that sees one knows why it stalled).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.state).errors.clone()
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Change {
    Build(Box<kube::runtime::watcher::Event<Build>>),
    Pod(Box<kube::runtime::watcher::Event<k8s_openapi::api::core::v1::Pod>>),
}

fn lock(state: &Mutex<TimelineState>) -> std::sync::MutexGuard<'_, TimelineState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TimelineState {
    fn build_changed(&mut self, build: &Build) {
        use kube::ResourceExt;
        let Some(status) = build.status.as_ref() else {
            return;
        };
        let state = format!(
            "{}/{} attempt={}",
            status.phase.map_or("-", |p| p.as_str()),
            status.reason().map_or("-", |r| r.as_str()),
            status.attempt
        );
        let states = self.builds.entry(build.name_any()).or_default();
        if states.last() != Some(&state) {
            states.push(state);
        }
    }

    fn pod_changed(&mut self, pod: &k8s_openapi::api::core::v1::Pod, deleted: bool) {
        use kube::ResourceExt;
        let now = tokio::time::Instant::now();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let build = pod
            .labels()
            .get(kiln::controller::labels::BUILD)
            .cloned()
            .unwrap_or_default();
        let life = self
            .pods
            .entry(name.clone())
            .and_modify(|life| {
                if life.uid != uid {
                    // A new pod under an old name: a life of its own.
                    *life = PodLife {
                        build: build.clone(),
                        created: now,
                        ended: None,
                        gone: None,
                        uid: uid.clone(),
                    };
                }
            })
            .or_insert_with(|| PodLife {
                build: build.clone(),
                created: now,
                ended: None,
                gone: None,
                uid: uid.clone(),
            });
        let live = kiln::controller::podstate::is_live(pod) && !deleted;
        if !live && life.ended.is_none() && !deleted {
            life.ended = Some(now);
        }
        if deleted {
            life.gone = Some(now);
        }
        if live {
            self.live.insert(name, build.clone());
        } else {
            self.live.remove(&name);
        }
        let total: Vec<String> = self.live.keys().cloned().collect();
        if total.len() > self.peak_total.len() {
            self.peak_total = total;
        }
        let of_build: Vec<String> = self
            .live
            .iter()
            .filter(|(_, b)| **b == build)
            .map(|(pod, _)| pod.clone())
            .collect();
        if of_build.len() > self.peak_per_build.len() {
            self.peak_per_build = of_build;
        }
    }
}
