//! The controller's reconcile against an in-memory API server (kube-fake-client), a manual
//! clock, a kubelet played by the test, and helpers that read the state the API ends with.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use kube_fake_client::{ClientBuilder, interceptor};
use serde_json::Value;

use kiln::controller::clock::ManualClock;
use kiln::controller::error::ReconcileError;
use kiln::controller::fixtures::PodFixture;
use kiln::controller::observer::{Outcome, ReconcileObserver};
use kiln::controller::{Config, Context};
use kiln::crd::Build;
use kiln::crd::fixtures::T0;

/// Namespace of every test object.
pub const NS: &str = "default";

/// Records every reconcile outcome.
#[derive(Default)]
pub struct Outcomes(pub Mutex<Vec<Outcome>>);

impl ReconcileObserver for Outcomes {
    fn reconciled(&self, _: &ObjectRef<Build>, outcome: Outcome, _: Duration) {
        self.0.lock().unwrap().push(outcome);
    }
}

/// A change to every context the harness makes (a cache admin client, a token key), kept
/// across restarts.
pub type Setup = Arc<dyn Fn(Context) -> Context + Send + Sync>;

/// The in-memory API, the controller's context over it, and the test's clock.
pub struct Harness {
    pub client: Client,
    pub ctx: Arc<Context>,
    pub clock: Arc<ManualClock>,
    pub outcomes: Arc<Outcomes>,
    pub config: Config,
    pub setup: Option<Setup>,
}

/// Builds an in-memory API holding `objects` (as JSON).
pub async fn fake_api(objects: Vec<Value>, interceptors: Option<interceptor::Funcs>) -> Client {
    let mut builder = ClientBuilder::new()
        .with_resource::<Build>()
        .with_status_subresource::<Build>()
        .with_status_subresource::<Pod>()
        .with_runtime_objects(objects);
    if let Some(funcs) = interceptors {
        builder = builder.with_interceptor_funcs(funcs);
    }
    builder.build().await.expect("fake API")
}

impl Harness {
    /// A harness whose API holds `builds` (and `extra` objects), with the default config.
    pub async fn new(builds: Vec<Build>) -> Self {
        Self::with(builds, Vec::new(), Config::default(), None).await
    }

    /// A harness with everything given.
    pub async fn with(
        builds: Vec<Build>,
        extra: Vec<Value>,
        config: Config,
        interceptors: Option<interceptor::Funcs>,
    ) -> Self {
        let mut objects: Vec<Value> = builds
            .into_iter()
            .map(|b| serde_json::to_value(b).unwrap())
            .collect();
        objects.extend(extra);
        let client = fake_api(objects, interceptors).await;
        let clock = Arc::new(ManualClock::new(T0));
        Self::over(client, clock, config, None)
    }

    fn over(client: Client, clock: Arc<ManualClock>, config: Config, setup: Option<Setup>) -> Self {
        let outcomes = Arc::new(Outcomes::default());
        let mut ctx = Context::new(client.clone(), config.clone())
            .with_clock(clock.clone())
            .with_observer(outcomes.clone());
        if let Some(setup) = &setup {
            ctx = setup(ctx);
        }
        Self {
            client,
            ctx: Arc::new(ctx),
            clock,
            outcomes,
            config,
            setup,
        }
    }

    /// Applies `setup` to the context, now and after every restart.
    pub fn customize(&mut self, setup: impl Fn(Context) -> Context + Send + Sync + 'static) {
        self.setup = Some(Arc::new(setup));
        self.restart();
    }

    /// A controller restart: a new context (no memory of anything) over the same API.
    pub fn restart(&mut self) {
        *self = Self::over(
            self.client.clone(),
            self.clock.clone(),
            self.config.clone(),
            self.setup.clone(),
        );
    }

    /// The whole API state, for a test that must change what the API allows no client to
    /// change (a deletion timestamp), then a new API holding it; the controller restarts
    /// with it.
    pub async fn rebuild(&mut self, edit: impl FnOnce(&mut Vec<Value>)) {
        let mut objects = Vec::new();
        for build in self.builds().await {
            objects.push(serde_json::to_value(build).unwrap());
        }
        for pod in self.pods().await {
            objects.push(serde_json::to_value(pod).unwrap());
        }
        for cm in Api::<ConfigMap>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            objects.push(serde_json::to_value(cm).unwrap());
        }
        for secret in Api::<Secret>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            objects.push(serde_json::to_value(secret).unwrap());
        }
        edit(&mut objects);
        let client = fake_api(objects, None).await;
        *self = Self::over(
            client,
            self.clock.clone(),
            self.config.clone(),
            self.setup.clone(),
        );
    }

    /// `kubectl delete build NAME`: with finalizers the Build is marked for deletion;
    /// without, it goes at once, and so does everything it owns.
    pub async fn delete_build(&mut self, name: &str) {
        let now = Time(self.clock_now());
        self.rebuild(|objects| {
            let Some(build) = objects
                .iter_mut()
                .find(|o| o["kind"] == "Build" && o["metadata"]["name"] == name)
            else {
                return;
            };
            let has_finalizers = build["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            if has_finalizers {
                build["metadata"]["deletionTimestamp"] = serde_json::to_value(&now).unwrap();
                return;
            }
            let uid = build["metadata"]["uid"].clone();
            objects.retain(|o| {
                let the_build = o["kind"] == "Build" && o["metadata"]["name"] == name;
                let owned = o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid));
                !the_build && !owned
            });
        })
        .await;
    }

    /// Deletes the Build and reconciles: its pods and ConfigMaps go first, then the
    /// finalizer lets go, and nothing of it is left.
    pub async fn delete_and_finalize(&mut self, name: &str) {
        self.delete_build(name).await;
        self.reconcile(name).await.expect("reconcile the deletion");
        assert!(self.pods().await.is_empty(), "pods are deleted first");
        assert!(
            self.build(name).await.is_some(),
            "the finalizer holds the Build meanwhile"
        );
        self.reconcile(name).await.expect("reconcile the deletion");
        assert!(self.build(name).await.is_none(), "the finalizer let go");
        assert!(self.pods().await.is_empty());
        assert!(self.config_map_names().await.is_empty());
    }

    /// The kubelet moves the pod of attempt `attempt` of Build `build` to `state`, then the
    /// controller reconciles until it has nothing more to do.
    pub async fn pod_becomes(
        &self,
        build: &str,
        attempt: u32,
        state: impl FnOnce(PodFixture) -> PodFixture,
    ) -> Requeue {
        let object = self.build(build).await.expect("the build exists");
        let fixture = state(PodFixture::for_build(&object, attempt));
        let pod = fixture.pod.metadata.name.clone().unwrap_or_default();
        self.kubelet(&pod, fixture).await;
        self.settle(build).await
    }

    pub fn clock_now(&self) -> k8s_openapi::jiff::Timestamp {
        use kiln::controller::clock::Clock;
        self.clock.now()
    }

    /// Moves time forward.
    pub fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    pub fn builds_api(&self) -> Api<Build> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// One reconcile of `name`, as the controller would run it.
    pub async fn reconcile(&self, name: &str) -> Result<Requeue, ReconcileError> {
        let build = self.builds_api().get(name).await.unwrap_or_else(|_| {
            // Gone: reconcile the name anyway (the controller may hold a stale object).
            Build::test(name)
        });
        kiln::controller::reconcile(Arc::new(build), self.ctx.clone()).await
    }

    /// Reconciles until a reconcile changes nothing (at most 10 times); panics on error.
    pub async fn settle(&self, name: &str) -> Requeue {
        for _ in 0..10 {
            let before = self.outcomes.0.lock().unwrap().len();
            let requeue = self.reconcile(name).await.expect("reconcile");
            let last = self.outcomes.0.lock().unwrap()[before];
            if last == Outcome::Unchanged {
                return requeue;
            }
        }
        panic!("{name} did not settle in 10 reconciles");
    }

    pub async fn build(&self, name: &str) -> Option<Build> {
        self.builds_api().get_opt(name).await.unwrap()
    }

    pub async fn builds(&self) -> Vec<Build> {
        let mut builds = self
            .builds_api()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        builds.sort_by_key(|b| b.name_any());
        builds
    }

    /// Every pod, by name.
    pub async fn pods(&self) -> Vec<Pod> {
        let mut pods = self
            .pods_api()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    pub async fn pod_names(&self) -> Vec<String> {
        self.pods().await.iter().map(|p| p.name_any()).collect()
    }

    /// The names of every object of kind `K` in the test namespace, sorted.
    pub async fn names<K>(&self) -> Vec<String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let mut names: Vec<String> = Api::<K>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await
            .unwrap()
            .iter()
            .map(|c| c.name_any())
            .collect();
        names.sort();
        names
    }

    pub async fn secret_names(&self) -> Vec<String> {
        self.names::<Secret>().await
    }

    pub async fn config_map_names(&self) -> Vec<String> {
        self.names::<ConfigMap>().await
    }

    /// The kubelet: gives pod `pod` the status of `fixture`.
    pub async fn kubelet(&self, pod: &str, fixture: PodFixture) {
        let mut current = self.pods_api().get(pod).await.expect("pod exists");
        current.status = fixture.pod.status;
        self.pods_api()
            .replace_status(pod, &PostParams::default(), &current)
            .await
            .expect("pod status");
    }

    /// `kubectl patch build NAME --type merge -p PATCH` (a spec change: a new generation).
    pub async fn patch_build(&self, name: &str, patch: Value) {
        self.builds_api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch build");
    }

    /// `(type, reason)` of every Event, oldest first.
    pub async fn events(&self) -> Vec<(String, String)> {
        let mut events = Api::<Event>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        events
            .into_iter()
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
            .collect()
    }

    /// The reasons of the Events, oldest first.
    pub async fn event_reasons(&self) -> Vec<String> {
        self.events().await.into_iter().map(|(_, r)| r).collect()
    }
}
