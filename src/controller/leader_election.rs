//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager), so that of
//! several controller replicas exactly one reconciles; the others stand by (I/O: the Lease).
//!
//! # Guarantees
//!
//! - The work (the controller) starts only after this replica holds the lease.
//! - A leader that cannot renew the lease within [`Election::renew_deadline`] of the first
//!   failed renewal stops its work and returns [`LeaderError::Lost`]: the process exits
//!   non-zero and restarts as a standby, with no state carried over. It never keeps
//!   reconciling on a lease it may no longer hold.
//! - On shutdown the work stops first (in-flight reconciles finish), then the lease is
//!   released, so that a standby takes over at once instead of after the lease expires.
//!
//! # Assumptions
//!
//! Node clocks are within [`Election::grace_seconds`] of each other (the lease is renewed that long
//! before it expires, and a standby takes an expired lease only after it expired by its own
//! clock).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

use super::error::RunError;
use super::observer::{Role, RoleObserver};

/// How long a lease is valid after its last renewal, in seconds.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// How long before expiry the leader renews, in seconds.
pub const LEASE_GRACE_SECONDS: u64 = 5;
/// How long to wait for the lease to be released at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts after an API error.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Which lease to contend for, and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    /// Namespace of the Lease (the controller's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity on the lease (its pod name): unique among the replicas.
    pub identity: String,
    /// Seconds a lease is valid after its last renewal.
    pub duration_seconds: u64,
    /// Seconds before expiry at which the leader renews.
    pub grace_seconds: u64,
}

impl Election {
    /// An election with the default timing.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration_seconds: LEASE_DURATION_SECONDS,
            grace_seconds: LEASE_GRACE_SECONDS,
        }
    }

    /// How long a leader keeps trying to renew after a failed renewal before it gives up:
    /// one second short of the time its lease has left.
    pub fn renew_deadline(&self) -> Duration {
        Duration::from_secs(self.grace_seconds.saturating_sub(1).max(1))
    }
}

/// Why leader election stopped the controller.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read or created (RBAC: `coordination.k8s.io` `leases` get,
    /// create, patch in the namespace).
    #[error("preparing Lease {namespace}/{name} for leader election")]
    Prepare {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The cause.
        #[source]
        source: LeaseManagerError,
    },
    /// The leader could not renew its lease in time: another replica may lead now.
    #[error(
        "lost Lease {namespace}/{name}: another replica may lead now; exiting so that this one restarts as a standby"
    )]
    Lost {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
    },
    /// The work failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// What the election loop tells the rest of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ElectionState {
    Standby,
    Leading,
    Lost,
}

/// A future that completes when the work must stop.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>>;

/// Contends for the lease until `shutdown`; while this replica leads, runs `work` with a
/// future that completes when the work must stop (shutdown, or the lease was lost).
/// Tells `roles` each change of this replica's role (for `/readyz` and `kiln_leader`).
pub async fn run_while_leading<W, F>(
    client: Client,
    election: &Election,
    roles: &dyn RoleObserver,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    work: W,
) -> Result<(), LeaderError>
where
    W: FnOnce(StopSignal) -> F,
    F: Future<Output = Result<(), RunError>>,
{
    let prepare = |source| LeaderError::Prepare {
        namespace: election.namespace.clone(),
        name: election.name.clone(),
        source,
    };
    // Field managers must differ between replicas: server-side apply's conflict on
    // `holderIdentity` is what keeps two of them from taking a free lease at once.
    let manager = LeaseManagerBuilder::new(client, &election.name)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_field_manager(format!("kiln-controller-{}", election.identity))
        .with_duration(election.duration_seconds)
        .with_grace(election.grace_seconds)
        .build()
        .await
        .map_err(prepare)?;
    let manager = Arc::new(manager);
    let identity = Some(election.identity.clone());
    roles.role_changed(Role::Standby, identity.clone());
    tracing::info!(
        lease = %format!("{}/{}", election.namespace, election.name),
        identity = %election.identity,
        "standing by for the lease"
    );

    let (standing_tx, mut standing) = watch::channel(ElectionState::Standby);
    let elector = tokio::spawn(elect(
        manager.clone(),
        standing_tx,
        election.renew_deadline(),
    ));
    let mut shutdown: StopSignal = Box::pin(shutdown);

    let leading = tokio::select! {
        _ = &mut shutdown => None,
        changed = standing.wait_for(|s| *s != ElectionState::Standby) => {
            Some(matches!(changed.map(|s| *s), Ok(ElectionState::Leading)))
        }
    };
    let result = match leading {
        None => Ok(()),
        Some(true) => {
            roles.role_changed(Role::Leader, identity.clone());
            tracing::info!(identity = %election.identity, "leading: starting the controller");
            lead(election, standing, shutdown, work).await
        }
        // The loop ended without leading: it can only have lost.
        Some(false) => Err(LeaderError::Lost {
            namespace: election.namespace.clone(),
            name: election.name.clone(),
        }),
    };

    elector.abort();
    let _ = elector.await;
    if !matches!(result, Err(LeaderError::Lost { .. })) {
        match tokio::time::timeout(RELEASE_TIMEOUT, manager.release()).await {
            Ok(Ok(())) => tracing::info!("lease released"),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "releasing the lease failed; it expires on its own")
            }
            Err(_) => tracing::warn!("releasing the lease timed out; it expires on its own"),
        }
    }
    roles.role_changed(Role::Standby, identity);
    result
}

/// Runs the work until shutdown or a lost lease.
async fn lead<W, F>(
    election: &Election,
    mut standing: watch::Receiver<ElectionState>,
    shutdown: StopSignal,
    work: W,
) -> Result<(), LeaderError>
where
    W: FnOnce(StopSignal) -> F,
    F: Future<Output = Result<(), RunError>>,
{
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost_flag = lost.clone();
    let stop: StopSignal = Box::pin(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = standing.wait_for(|s| *s == ElectionState::Lost) => {
                lost_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::error!("the lease was lost: stopping the controller");
            }
        }
    });
    work(stop).await?;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(LeaderError::Lost {
            namespace: election.namespace.clone(),
            name: election.name.clone(),
        });
    }
    Ok(())
}

/// Keeps `changed()` running (it acquires, then renews the lease) and publishes where this
/// replica stands. A leader whose renewals fail for longer than `renew_deadline` is `Lost`,
/// and the loop ends.
async fn elect(
    manager: Arc<LeaseManager>,
    standing: watch::Sender<ElectionState>,
    renew_deadline: Duration,
) {
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let leading = *standing.borrow() == ElectionState::Leading;
        match manager.changed().await {
            Ok(true) => {
                failing_since = None;
                standing.send_replace(ElectionState::Leading);
            }
            Ok(false) if leading => {
                standing.send_replace(ElectionState::Lost);
                return;
            }
            Ok(false) => failing_since = None,
            Err(error) => {
                tracing::warn!(error = %error, leading, "leader election: the Lease API call failed");
                if leading {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= renew_deadline {
                        standing.send_replace(ElectionState::Lost);
                        return;
                    }
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::Timestamp;
    use kube::Api;
    use kube_fake_client::ClientBuilder;

    use super::*;

    /// The last role the election reported (`Single` until it reports one).
    struct LastRole(std::sync::Mutex<Role>);

    impl LastRole {
        fn new() -> Self {
            Self(std::sync::Mutex::new(Role::Single))
        }

        fn role(&self) -> Role {
            self.0.lock().unwrap().clone()
        }
    }

    impl RoleObserver for LastRole {
        fn role_changed(&self, role: Role, _identity: Option<String>) {
            *self.0.lock().unwrap() = role;
        }
    }

    fn quick(identity: &str) -> Election {
        Election {
            duration_seconds: 2,
            grace_seconds: 1,
            ..Election::new("kiln-system", "kiln-controller", identity)
        }
    }

    async fn holder(client: &Client) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kiln-system");
        leases
            .get("kiln-controller")
            .await
            .ok()?
            .spec?
            .holder_identity
    }

    #[test]
    fn the_renew_deadline_is_short_of_the_grace_period() {
        assert_eq!(
            Election::new("ns", "l", "a").renew_deadline(),
            Duration::from_secs(4)
        );
        assert_eq!(quick("a").renew_deadline(), Duration::from_secs(1));
    }

    /// One replica leads and works; the other stands by (ready, not working); when the
    /// leader shuts down, its work stops first and then the lease is released, so that the
    /// standby can take it at once. (The takeover itself needs the API server's
    /// server-side-apply ownership rules, which the in-memory API does not model: it keeps
    /// the released fields owned by the old holder.)
    #[tokio::test]
    async fn one_replica_works_the_other_stands_by_and_shutdown_releases_the_lease() {
        let client = ClientBuilder::new().build().await.unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));

        let replica = |identity: &'static str, weight: usize| {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let roles = Arc::new(LastRole::new());
            let (client, started, finished, m) = (
                client.clone(),
                started.clone(),
                finished.clone(),
                roles.clone(),
            );
            let task = tokio::spawn(async move {
                run_while_leading(
                    client.clone(),
                    &quick(identity),
                    &*m,
                    async move {
                        let _ = stopped.await;
                    },
                    |stop| async move {
                        started.fetch_add(weight, Ordering::SeqCst);
                        stop.await;
                        // The lease is still held while the work winds down.
                        assert_eq!(holder(&client).await.as_deref(), Some(identity));
                        finished.fetch_add(weight, Ordering::SeqCst);
                        Ok(())
                    },
                )
                .await
            });
            (stop, task, roles)
        };

        let (stop_a, task_a, roles_a) = replica("a", 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while started.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "a never led");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(holder(&client).await.as_deref(), Some("a"));
        assert_eq!(roles_a.role(), Role::Leader);

        let (stop_b, task_b, roles_b) = replica("b", 10);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "b worked while a led");
        assert_eq!(roles_b.role(), Role::Standby);

        stop_a.send(()).unwrap();
        task_a.await.unwrap().unwrap();
        assert_eq!(
            finished.load(Ordering::SeqCst),
            1,
            "a's work did not finish"
        );
        assert_eq!(holder(&client).await, None, "a did not release the lease");
        assert_eq!(roles_a.role(), Role::Standby);

        stop_b.send(()).unwrap();
        task_b.await.unwrap().unwrap();
    }

    /// A leader that finds another holder on the lease at its next renewal stops its work
    /// and reports the loss (the process then exits and restarts as a standby).
    #[tokio::test]
    async fn a_leader_that_loses_the_lease_stops_working_and_says_so() {
        let client = ClientBuilder::new().build().await.unwrap();
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kiln-system");
        let roles = LastRole::new();
        let intruder = async {
            while holder(&client).await.as_deref() != Some("a") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            leases
                .patch(
                    "kiln-controller",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(serde_json::json!({
                        "spec": {"holderIdentity": "intruder", "renewTime": MicroTime(Timestamp::now())}
                    })),
                )
                .await
                .unwrap();
        };
        let election = quick("a");
        let run = run_while_leading(
            client.clone(),
            &election,
            &roles,
            std::future::pending(),
            |stop| async move {
                stop.await;
                Ok(())
            },
        );
        let (result, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(run, intruder)
        })
        .await
        .expect("the loss was never noticed");
        assert!(
            matches!(result, Err(LeaderError::Lost { .. })),
            "{result:?}"
        );
        // The lost lease is not "released" from under its new holder.
        assert_eq!(holder(&client).await.as_deref(), Some("intruder"));
        assert_eq!(roles.role(), Role::Standby);
    }

    /// A standby that is shut down never runs the work.
    #[tokio::test]
    async fn a_standby_that_is_shut_down_never_works() {
        let client = ClientBuilder::new().build().await.unwrap();
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kiln-system");
        let taken: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kiln-controller", "namespace": "kiln-system"},
            "spec": {
                "holderIdentity": "someone-else",
                "leaseDurationSeconds": 3600,
                "acquireTime": MicroTime(Timestamp::now()),
                "renewTime": MicroTime(Timestamp::now()),
            },
        }))
        .unwrap();
        leases.create(&Default::default(), &taken).await.unwrap();

        let roles = LastRole::new();
        let worked = AtomicUsize::new(0);
        run_while_leading(
            client.clone(),
            &quick("b"),
            &roles,
            tokio::time::sleep(Duration::from_millis(300)),
            |stop| async {
                worked.fetch_add(1, Ordering::SeqCst);
                stop.await;
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(worked.load(Ordering::SeqCst), 0);
        assert_eq!(holder(&client).await.as_deref(), Some("someone-else"));
    }
}
