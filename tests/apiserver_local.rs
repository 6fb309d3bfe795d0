//! `kubectl kiln build --local` over a real kube-apiserver (I/O: the shared control plane,
//! the real controller in-process for the test's namespace, Kiln's cache service with
//! tokens on loopback, and a test kubelet that runs each build pod's `context` init
//! container for real: the Kiln binary's `kiln context receive`, reached by the plugin
//! through the API server's `pods/proxy`).
//!
//! What it shows: a user bound to `config/rbac/local_builder_role.yaml` in the namespace,
//! and nothing else, uploads a directory; the Build names its tar by digest; the receiver
//! unpacks exactly what `.dockerignore` kept and stores it in the namespace's contexts
//! repository; a second upload of the same tree sends no byte; a user without `pods/proxy`
//! is refused with a message naming it; deleting the Build deletes its context's tag.
//!
//! Skipped, with the reason printed, when no Go toolchain can build the control plane;
//! `KILN_REQUIRE_ENVTEST=1` (set by `.ci/run`) turns that into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster;
use common::controller::{Identity, Outcomes, RunningController, fast_config};
use common::envtest;
use common::kiln_server::{self, KilnServer};
use common::kubelet::{Receivers, Script, TestKubelet};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kiln::cacheapi::client::AdminClient;
use kiln::cacheapi::token::TokenAction;
use kiln::controller::config::CacheService;
use kiln::crd::{Build, Phase};
use kiln::oci::digest::Digest;
use kiln::plugin::local::LocalBuildArgs;
use kiln::plugin::upload::{Console, LocalBuildOutcome, build_local};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

/// The receivers of every test here listen on one port of one address: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A working tree: a Dockerfile, kept files, and files `.dockerignore` leaves out.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("logs")).unwrap();
    std::fs::write(root.join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n").unwrap();
    std::fs::write(root.join(".dockerignore"), "secret.txt\nlogs\n*.tmp\n").unwrap();
    std::fs::write(root.join("hello.txt"), "hello from the laptop\n").unwrap();
    std::fs::write(root.join("sub/kept.txt"), vec![b'k'; 300_000]).unwrap();
    std::fs::write(root.join("secret.txt"), "never leaves the laptop\n").unwrap();
    std::fs::write(root.join("logs/build.log"), "noise\n").unwrap();
    std::fs::write(root.join("scratch.tmp"), "noise\n").unwrap();
    dir
}

/// Every file under `root`, relative, sorted.
fn files_under(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn args(dir: &Path, name: &str) -> LocalBuildArgs {
    LocalBuildArgs {
        dir: dir.to_owned(),
        image: "registry.example.com/team/dev:local".to_owned(),
        name: Some(name.to_owned()),
        wait: Duration::from_secs(60),
        poll: Duration::from_millis(200),
        ..LocalBuildArgs::default()
    }
}

/// Runs `kubectl kiln build --local` as `client`, returning its outcome and what it
/// printed on stderr.
async fn upload(
    client: &Client,
    namespace: &str,
    args: &LocalBuildArgs,
) -> (Result<LocalBuildOutcome, String>, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = {
        let mut console = Console {
            out: &mut out,
            err: &mut err,
            err_is_terminal: false,
        };
        build_local(client.clone(), namespace, args, &mut console).await
    };
    (
        result.map_err(|e| chain(&e)),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// An error and its sources, as the plugin prints them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn wait_for_phase(client: &Client, namespace: &str, name: &str, want: Phase) -> Build {
    let builds: Api<Build> = Api::namespaced(client.clone(), namespace);
    cluster::wait_until(
        &format!("Build {name} to be {want:?}"),
        Duration::from_secs(60),
        || async {
            builds
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(want))
        },
    )
    .await
}

/// Binds `user` in `namespace` to the documented ClusterRole.
async fn bind_local_builder(admin: &Client, namespace: &str, user: &str) {
    let role =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/rbac/local_builder_role.yaml");
    cluster::apply_file(admin, &role, None).await.unwrap();
    bind(admin, namespace, user, "ClusterRole", "kiln-local-builder").await;
}

/// Gives `user` everything the documented role does but `pods/proxy`.
async fn bind_without_proxy(admin: &Client, namespace: &str, user: &str) {
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    let role = Role {
        metadata: ObjectMeta {
            name: Some("no-proxy".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![
            rule("kiln.dev", &["builds"], &["create", "get", "list", "watch"]),
            rule("", &["pods"], &["get", "list", "watch"]),
            rule("", &["pods/log"], &["get"]),
        ]),
    };
    Api::<Role>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    bind(admin, namespace, user, "Role", "no-proxy").await;
}

/// Binds `user` in `namespace` to the `kind` (Role or ClusterRole) `role`.
async fn bind(admin: &Client, namespace: &str, user: &str, kind: &str, role: &str) {
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(format!("{user}-{role}")),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: kind.into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: user.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// Whether the cache has the tag `<namespace>/kiln_contexts:<tag>`, asked with a token of
/// that namespace.
async fn cache_has_tag(cache: &KilnServer, namespace: &str, tag: &str) -> bool {
    let token = kiln_server::token(namespace, &[TokenAction::Pull], &kiln_server::key());
    let url = format!(
        "{}/v2/{namespace}/kiln_contexts/manifests/{tag}",
        cache.url()
    );
    let answer = reqwest::Client::new()
        .head(url)
        .basic_auth("kiln", Some(token))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    answer.status().is_success()
}

/// A namespace with Kiln's cache (tokens on), the controller (minting tokens, with the
/// cache's admin API) and a test kubelet whose pods succeed after running their receiver.
struct Scene {
    admin: Client,
    namespace: String,
    receivers: Receivers,
    cache: KilnServer,
    kubelet: TestKubelet,
    controller: RunningController,
}

impl Scene {
    async fn start(cp: &'static envtest::ControlPlane, base: &str) -> Self {
        let receivers = Receivers::new(Path::new(env!("CARGO_BIN_EXE_kiln")))
            .unwrap_or_else(|why| panic!("cannot run the context receivers: {why}"));
        let admin = cp.client();
        let namespace = cluster::create_namespace(&admin, base).await;
        let cache = KilnServer::start(kiln_server::Config {
            tokens: true,
            ..kiln_server::Config::default()
        })
        .await;
        let image = Digest::of(b"image built from the laptop");
        let for_kubelet = receivers.clone();
        let kubelet = TestKubelet::start(admin.clone(), &namespace, move |_| {
            Script::succeed(&image).receiving_context(&for_kubelet)
        })
        .await;
        let mut config = fast_config(&namespace);
        config.cache_service = Some(CacheService::parse(&cache.url()).unwrap());
        let identity = Identity::superuser(cp, &format!("kiln-{base}-controller"));
        let admin_api = AdminClient::new(&cache.url(), kiln_server::ADMIN).unwrap();
        let controller =
            RunningController::start_with(&identity, config, &Outcomes::default(), |context| {
                context
                    .with_token_key(kiln_server::key())
                    .with_cache_admin(admin_api)
            });
        Self {
            admin,
            namespace,
            receivers,
            cache,
            kubelet,
            controller,
        }
    }

    /// Checks the kubelet met no error and stops the controller.
    async fn stop(self) {
        assert_eq!(self.kubelet.errors(), Vec::<String>::new());
        self.controller.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_with_the_documented_role_builds_a_directory_and_a_second_upload_sends_nothing() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let _alone = ONE_AT_A_TIME.lock().await;
    let scene = Scene::start(cp, "local").await;
    let Scene {
        admin,
        namespace,
        receivers,
        cache,
        ..
    } = &scene;
    let (admin, namespace) = (admin.clone(), namespace.clone());

    bind_local_builder(&admin, &namespace, "dev").await;
    let dev = cp.client_impersonating("dev", &[]);
    let dir = tree();
    let expected = kiln::context::pack(
        dir.path(),
        &kiln::context::load_dockerignore(dir.path(), "Dockerfile").unwrap(),
        &kiln::context::PackOptions::default(),
        std::io::sink(),
    )
    .unwrap();

    // The first upload sends the whole tar.
    let (first, printed) = upload(&dev, &namespace, &args(dir.path(), "dev")).await;
    let first = first.unwrap_or_else(|err| panic!("the upload failed: {err}\n{printed}"));
    assert_eq!(first.digest, expected.digest, "{printed}");
    assert_eq!(first.size, expected.tar_bytes);
    assert_eq!(first.bytes_sent, first.size, "{printed}");
    let built = wait_for_phase(&admin, &namespace, "dev", Phase::Succeeded).await;
    let local = built.spec.source.local.clone().unwrap();
    assert_eq!(local.digest, expected.digest.to_string());
    assert_eq!(u64::try_from(local.size).unwrap(), expected.tar_bytes);
    assert_eq!(
        files_under(&receivers.context_dir("dev-1")),
        [".dockerignore", "Dockerfile", "hello.txt", "sub/kept.txt"],
        "the receiver unpacked what .dockerignore kept, and nothing else"
    );
    assert_eq!(
        std::fs::read(receivers.context_dir("dev-1").join("sub/kept.txt")).unwrap(),
        vec![b'k'; 300_000]
    );
    let tag = format!("build-{}", built.uid().unwrap());
    assert!(
        cache_has_tag(cache, &namespace, &tag).await,
        "the context is kept in the cache"
    );

    // The same tree again, as another Build: nothing is sent.
    let (second, printed) = upload(&dev, &namespace, &args(dir.path(), "dev-again")).await;
    let second = second.unwrap_or_else(|err| panic!("the second upload failed: {err}\n{printed}"));
    assert_eq!(second.digest, expected.digest);
    assert_eq!(second.bytes_sent, 0, "{printed}");
    wait_for_phase(&admin, &namespace, "dev-again", Phase::Succeeded).await;
    assert_eq!(
        files_under(&receivers.context_dir("dev-again-1")),
        [".dockerignore", "Dockerfile", "hello.txt", "sub/kept.txt"]
    );

    // Deleting the Build deletes its context's tag; the other Build's tag stays.
    let builds: Api<Build> = Api::namespaced(admin.clone(), &namespace);
    builds
        .delete("dev", &DeleteParams::default())
        .await
        .unwrap();
    cluster::wait_until("the Build to be gone", Duration::from_secs(30), || async {
        builds.get_opt("dev").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        !cache_has_tag(cache, &namespace, &tag).await,
        "the deleted Build's tag is gone"
    );
    let again = builds.get("dev-again").await.unwrap();
    let again_tag = format!("build-{}", again.uid().unwrap());
    assert!(cache_has_tag(cache, &namespace, &again_tag).await);

    scene.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_without_pods_proxy_is_told_what_is_missing() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let _alone = ONE_AT_A_TIME.lock().await;
    let scene = Scene::start(cp, "local-denied").await;
    let (admin, namespace) = (scene.admin.clone(), scene.namespace.clone());

    // Without any right in the namespace: not even the Build.
    let stranger = cp.client_impersonating("stranger", &[]);
    let dir = tree();
    let (refused, _) = upload(&stranger, &namespace, &args(dir.path(), "nope")).await;
    let refused = refused.expect_err("a user with no rights creates no Build");
    assert!(refused.contains("builds"), "{refused}");

    bind_without_proxy(&admin, &namespace, "half").await;
    let half = cp.client_impersonating("half", &[]);
    let (refused, printed) = upload(&half, &namespace, &args(dir.path(), "half")).await;
    let refused = refused.expect_err("a user without pods/proxy cannot upload");
    assert!(refused.contains("pods/proxy"), "{refused}\n{printed}");
    let builds: Api<Build> = Api::namespaced(admin.clone(), &namespace);
    // The Build says what it waits for.
    cluster::wait_until(
        "Build half to wait for its context",
        Duration::from_secs(30),
        || async {
            builds.get_opt("half").await.ok().flatten().filter(|b| {
                b.status.as_ref().and_then(|s| s.reason())
                    == Some(kiln::crd::Reason::WaitingForContext)
            })
        },
    )
    .await;
    builds
        .delete("half", &DeleteParams::default())
        .await
        .unwrap();

    scene.stop().await;
}
