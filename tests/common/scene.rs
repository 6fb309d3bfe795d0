//! One controller scenario's world over the real API server (test code; does I/O): a
//! namespace of its own, the real controller running for it as a user of its own, the test
//! kubelet playing the node, and a [`Timeline`] recording everything from the start; with
//! the waits, diagnostics and end-of-scenario checks every scenario shares.
//!
//! ```ignore
//! let Some(scene) = Scene::new("scenario-x", |_| Script::succeed(&digest)).await else {
//!     return; // skipped: no control plane (the reason is printed)
//! };
//! scene.create(build("app")).await;
//! scene.wait_for("app", Phase::Succeeded, Reason::Succeeded).await;
//! scene.finish().await; // no failed reconcile, no refused write, one live pod per Build
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kiln::cacheapi::token::TokenKey;
use kiln::controller::Config;
use kiln::controller::config::CacheService;
use kiln::controller::podstate::is_live;
use kiln::crd::{Build, Phase, Reason};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::cluster;
use super::controller::{Identity, Outcomes, RunningController, Timeline, fast_config};
use super::envtest::{self, AuditEvent, ControlPlane};
use super::kubelet::{Script, TestKubelet};

/// How long any one step of a scenario may take.
pub const WAIT: Duration = Duration::from_secs(30);
/// The cache service a [`Scene::with_cache_tokens`] controller names in its pods.
pub const CACHE_SERVICE: &str = "http://kiln-cache.kiln-system.svc:5000";
/// The user the controller acts as in these scenarios.
pub const CONTROLLER_USER: &str = "kiln-controller-under-test";

/// One scenario's world: its namespace, its controller, the test kubelet and a timeline.
pub struct Scene {
    /// The shared control plane.
    pub cp: &'static ControlPlane,
    /// The admin's client: what the test itself acts as.
    pub admin: Client,
    /// The scenario's namespace.
    pub ns: String,
    /// Who the controller acts as.
    pub identity: Identity,
    /// The controller's settings ([`fast_config`] for the namespace, as edited).
    pub config: Config,
    /// How the controller's reconciles ended, across restarts.
    pub outcomes: Outcomes,
    /// The test kubelet of the namespace.
    pub kubelet: TestKubelet,
    /// Every Build state and pod event of the namespace since the scene began.
    pub timeline: Timeline,
    token_key: Option<TokenKey>,
    controller: Option<RunningController>,
}

impl Scene {
    /// A namespace named after `base`, the test kubelet playing `script` there, and the
    /// controller running for it with [`fast_config`] as a superuser of its own. `None`
    /// when the control plane is unavailable (the reason is printed).
    pub async fn new<F>(base: &str, script: F) -> Option<Scene>
    where
        F: Fn(&Pod) -> Script + Send + Sync + 'static,
    {
        Self::with_config(base, |_| {}, script).await
    }

    /// [`Scene::with_config`], with the controller minting cache tokens: it knows a cache
    /// service (never called: no cache leases) and holds a token key, so every attempt of
    /// a Build with a cache gets its token Secret.
    pub async fn with_cache_tokens<F>(
        base: &str,
        edit: impl FnOnce(&mut Config),
        script: F,
    ) -> Option<Scene>
    where
        F: Fn(&Pod) -> Script + Send + Sync + 'static,
    {
        let cp = envtest::shared().await?;
        let identity = Identity::superuser(cp, CONTROLLER_USER);
        let key = TokenKey::from_bytes(&[7; 32]).expect("a token key");
        let edit = |config: &mut Config| {
            config.cache_service = Some(CacheService::parse(CACHE_SERVICE).expect("a URL"));
            edit(config);
        };
        Some(Self::assemble(cp, base, identity, edit, Some(key), script).await)
    }

    /// [`Scene::new`] with the controller's settings changed by `edit`.
    pub async fn with_config<F>(
        base: &str,
        edit: impl FnOnce(&mut Config),
        script: F,
    ) -> Option<Scene>
    where
        F: Fn(&Pod) -> Script + Send + Sync + 'static,
    {
        let cp = envtest::shared().await?;
        let identity = Identity::superuser(cp, CONTROLLER_USER);
        Some(Self::with_identity(cp, base, identity, edit, script).await)
    }

    /// The scene with the controller acting as `identity` (e.g. a ServiceAccount bound to
    /// the RBAC the Helm chart ships).
    pub async fn with_identity<F>(
        cp: &'static ControlPlane,
        base: &str,
        identity: Identity,
        edit: impl FnOnce(&mut Config),
        script: F,
    ) -> Scene
    where
        F: Fn(&Pod) -> Script + Send + Sync + 'static,
    {
        Self::assemble(cp, base, identity, edit, None, script).await
    }

    async fn assemble<F>(
        cp: &'static ControlPlane,
        base: &str,
        identity: Identity,
        edit: impl FnOnce(&mut Config),
        token_key: Option<TokenKey>,
        script: F,
    ) -> Scene
    where
        F: Fn(&Pod) -> Script + Send + Sync + 'static,
    {
        let admin = cp.client();
        let ns = cluster::create_namespace(&admin, base).await;
        let timeline = Timeline::start(&admin, &ns).await;
        let kubelet = TestKubelet::start(admin.clone(), &ns, script).await;
        let mut config = fast_config(&ns);
        edit(&mut config);
        let mut scene = Scene {
            cp,
            admin,
            ns,
            identity,
            config,
            outcomes: Outcomes::default(),
            token_key,
            controller: None,
            kubelet,
            timeline,
        };
        scene.start_controller();
        scene
    }

    pub fn builds(&self) -> Api<Build> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    pub fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    pub fn events(&self) -> Api<Event> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// Starts a controller (after [`Scene::stop_controller`], a new one).
    pub fn start_controller(&mut self) {
        assert!(self.controller.is_none(), "a controller runs already");
        self.controller = Some(RunningController::start(
            &self.identity,
            self.config.clone(),
            &self.outcomes,
            self.token_key.as_ref(),
        ));
    }

    /// Stops the controller through its shutdown future and waits until it returned.
    pub async fn stop_controller(&mut self) {
        if let Some(controller) = self.controller.take() {
            controller.stop().await;
        }
    }

    /// Creates `build` as the test (admin) would apply it.
    pub async fn create(&self, build: Build) -> Build {
        let name = build.name_any();
        self.builds()
            .create(&PostParams::default(), &build)
            .await
            .unwrap_or_else(|err| panic!("creating Build {name}: {err}"))
    }

    /// Merge-patches the Build's spec, as `kubectl patch --type=merge` would.
    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        self.builds()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap_or_else(|err| panic!("patching Build {name}: {err}"));
    }

    /// Waits until the Build `name` satisfies `done`; on timeout, prints what the scene
    /// looks like and panics.
    pub async fn wait(&self, name: &str, what: &str, done: impl Fn(&Build) -> bool) -> Build {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(build) = self.builds().get_opt(name).await.ok().flatten()
                && done(&build)
            {
                return build;
            }
            if tokio::time::Instant::now() > deadline {
                self.diagnose().await;
                panic!("Build {name} did not become {what} within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the Build `name` has `phase` with `reason`, and the timeline has
    /// recorded that state (its watch may deliver it after a read shows it), so that a
    /// check of the timeline that follows sees it.
    pub async fn wait_for(&self, name: &str, phase: Phase, reason: Reason) -> Build {
        let build = self
            .wait(name, &format!("{phase:?}/{reason:?}"), |b| {
                phase_reason(b) == (Some(phase), Some(reason))
            })
            .await;
        let attempt = build.status.as_ref().map_or(0, |s| s.attempt);
        let state = format!("{}/{} attempt={attempt}", phase.as_str(), reason.as_str());
        self.until(&format!("the timeline to record {name} {state}"), || {
            let seen = self.timeline.states(name).contains(&state);
            async move { seen.then_some(()) }
        })
        .await;
        build
    }

    /// Waits until `check` returns `Some`, printing the scene on timeout.
    pub async fn until<T, Fut>(&self, what: &str, mut check: impl FnMut() -> Fut) -> T
    where
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                self.diagnose().await;
                panic!("timed out after {WAIT:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the pod `name` no longer exists.
    pub async fn wait_pod_gone(&self, name: &str) {
        self.wait_gone(&self.pods(), "pod", name).await;
    }

    /// Deletes the Build `name` as a person would (`kubectl delete`) and waits until it is
    /// gone: until its finalizer let go.
    pub async fn delete_build(&self, name: &str) {
        self.builds()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|err| panic!("deleting Build {name}: {err}"));
        self.wait_gone(&self.builds(), "Build", name).await;
    }

    async fn wait_gone<K>(&self, api: &Api<K>, kind: &str, name: &str)
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.until(&format!("{kind} {name} to be gone"), || async {
            api.get_opt(name)
                .await
                .ok()
                .and_then(|found| found.is_none().then_some(()))
        })
        .await;
    }

    /// Names of the pods of this namespace that are still live.
    pub async fn live_pods(&self) -> Vec<String> {
        let mut live: Vec<String> = self
            .pods()
            .list(&ListParams::default())
            .await
            .expect("list pods")
            .items
            .iter()
            .filter(|pod| is_live(pod))
            .map(ResourceExt::name_any)
            .collect();
        live.sort();
        live
    }

    /// Every write the controller made in this namespace so far, in order.
    pub fn controller_writes(&self) -> Vec<AuditEvent> {
        self.cp
            .audit_events()
            .into_iter()
            .filter(|event| event.namespace == self.ns && event.user == self.identity.user)
            .collect()
    }

    /// Prints the Builds, pods, Events, the timeline and the controller's failures, so
    /// that a failing scenario says where it stalled.
    pub async fn diagnose(&self) {
        let mut report = format!("--- scene {} ---\n", self.ns);
        for build in self
            .builds()
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            report += &format!(
                "Build {}: states {:?}\n{}\n",
                build.name_any(),
                self.timeline.states(&build.name_any()),
                serde_yaml::to_string(&build.status).unwrap_or_default()
            );
        }
        for pod in self
            .pods()
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let status = pod.status.as_ref();
            report += &format!(
                "pod {}: phase {:?} reason {:?} deleting {}\n",
                pod.name_any(),
                status.and_then(|s| s.phase.as_deref()),
                status.and_then(|s| s.reason.as_deref()),
                pod.metadata.deletion_timestamp.is_some()
            );
        }
        for event in self
            .events()
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            report += &format!(
                "event {} {}: {}\n",
                event.type_.unwrap_or_default(),
                event.reason.unwrap_or_default(),
                event.note.unwrap_or_default()
            );
        }
        report += &format!(
            "failed reconciles: {:?}\nkubelet errors: {:?}\ntimeline errors: {:?}\n",
            self.outcomes.failures(),
            self.kubelet.errors(),
            self.timeline.errors()
        );
        let _ = writeln!(std::io::stderr(), "{report}");
    }

    /// Stops the controller and checks what every scenario must hold: it stopped cleanly,
    /// no reconcile failed, no write of the controller was refused, the test kubelet and
    /// the timeline met no error, and no Build ever had two live pods at once.
    pub async fn finish(self) {
        self.finish_tolerating(|_| false).await;
    }

    /// [`Scene::finish`], tolerating the refused writes `expected` picks out.
    pub async fn finish_tolerating(self, expected: impl Fn(&AuditEvent) -> bool) {
        self.finish_expecting(expected, |_, _| false).await;
    }

    /// [`Scene::finish_tolerating`], also tolerating the failed reconciles `failed` picks
    /// out by Build and step.
    pub async fn finish_expecting(
        mut self,
        expected: impl Fn(&AuditEvent) -> bool,
        failed: impl Fn(&str, &str) -> bool,
    ) {
        self.stop_controller().await;
        let mut failures = self.outcomes.failures();
        failures.retain(|(build, step)| !failed(build, step));
        let refused: Vec<String> = self
            .controller_writes()
            .iter()
            .filter(|event| event.code >= 400 && !expected(event))
            .map(|event| {
                format!(
                    "{} {} {} → {}",
                    event.verb,
                    resource(event),
                    event.name,
                    event.code
                )
            })
            .collect();
        if !failures.is_empty() || !refused.is_empty() {
            self.diagnose().await;
        }
        assert_eq!(failures, Vec::new(), "failed reconciles");
        assert_eq!(refused, Vec::<String>::new(), "refused controller writes");
        assert_eq!(self.kubelet.errors(), Vec::<String>::new());
        assert_eq!(self.timeline.errors(), Vec::<String>::new());
        let peak = self.timeline.peak_live_per_build();
        assert!(
            peak.len() <= 1,
            "two live pods of one Build at once: {peak:?}"
        );
    }
}

/// A Build named `name` as a person would apply it: [`Build::test`]'s spec (a Git source,
/// output `registry.example.com/team/<name>:latest`, retries 2), no server-set metadata.
pub fn build(name: &str) -> Build {
    let mut build = Build::test(name);
    build.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    };
    build
}

pub fn phase_reason(build: &Build) -> (Option<Phase>, Option<Reason>) {
    let status = build.status.as_ref();
    (
        status.and_then(|s| s.phase),
        status.and_then(|s| s.reason()),
    )
}

/// `resource[/subresource]` of an audited write.
pub fn resource(event: &AuditEvent) -> String {
    if event.subresource.is_empty() {
        event.resource.clone()
    } else {
        format!("{}/{}", event.resource, event.subresource)
    }
}

/// The writes counted by `verb resource[/subresource]`.
pub fn count_writes(events: &[AuditEvent]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in events {
        *counts
            .entry(format!("{} {}", event.verb, resource(event)))
            .or_default() += 1;
    }
    counts
}

/// Asserts that `expected` occur in `states` in this order (other states may come
/// between: a watch may coalesce nothing, but the controller may write more).
pub fn assert_in_order(states: &[String], expected: &[&str]) {
    let mut rest = states.iter();
    for want in expected {
        assert!(
            rest.any(|state| state.starts_with(want)),
            "{want:?} missing (in this order) from {states:?}"
        );
    }
}

pub fn pod_name(pod: &Pod) -> String {
    pod.name_any()
}

/// Writes to the real stderr, past libtest's capture: numbers a reader of CI logs wants.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The least-privilege scenario: the controller, acting as `identity` (a ServiceAccount
/// bound to the RBAC under test), runs a Build that reads a push Secret and a builder
/// ServiceAccount to success, then through its finalizer. [`Scene::finish`] fails on any
/// refused write or failed reconcile, so a missing permission fails the caller.
pub async fn a_build_succeeds_as(cp: &'static ControlPlane, base: &str, identity: Identity) {
    let digest = kiln::oci::digest::Digest::of(b"least privilege");
    let scene = Scene::with_identity(
        cp,
        base,
        identity,
        |_| {},
        move |_| Script::succeed(&digest).running_for(Duration::from_millis(300)),
    )
    .await;
    // A push Secret and a builder ServiceAccount, so that reading both is exercised.
    cluster::apply_yaml(
        &scene.admin,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: { name: builder }\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: { name: regcred }\n\
         type: kubernetes.io/dockerconfigjson\n\
         stringData: { .dockerconfigjson: '{\"auths\":{}}' }\n",
        Some(&scene.ns),
    )
    .await
    .expect("create the ServiceAccount and the Secret");
    let mut named = build("app").push_secret("regcred").inline("FROM scratch\n");
    named.spec.builder.service_account_name = Some("builder".to_owned());
    scene.create(named).await;
    scene
        .wait_for("app", Phase::Succeeded, Reason::Succeeded)
        .await;
    // And through the finalizer.
    scene.delete_build("app").await;
    assert!(
        scene
            .controller_writes()
            .iter()
            .any(|e| e.verb == "patch" && e.resource == "builds"),
        "the controller acted as {}",
        scene.identity.user
    );
    // No reconcile failed and no write was refused: the permissions are enough.
    scene.finish().await;
}
