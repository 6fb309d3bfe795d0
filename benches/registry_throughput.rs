//! Push and pull throughput of Kiln's cache service against Debian's `docker-registry`
//! (CNCF distribution) measured in the same run, on the same disk, over loopback, with the
//! same client sending identical requests to both. Target: ≥ 2× on both.
//!
//! `cargo bench --bench registry_throughput`; sizes: KILN_BENCH_BLOB_MB (64),
//! KILN_BENCH_CLIENTS (4 parallel clients), KILN_BENCH_BLOBS_PER_CLIENT (2),
//! KILN_BENCH_ROUNDS (3, best of). Under `cargo test` it does a tiny smoke run.
//!
//! A push is what containerd's pusher sends: `POST /v2/<repo>/blobs/uploads/`, then one
//! `PUT <location>?digest=` with the whole blob. A pull is `GET /v2/<repo>/blobs/<digest>`
//! read to the end. Kiln runs as its release binary in its own process, like
//! docker-registry, and fsyncs every blob before it answers (docker-registry does not
//! fsync at all).
//!
//! The machine may be shared, so wall-clock ratios move with whatever else runs; the CPU
//! time each server process spent on the same work (from /proc) is printed beside them as
//! a ratio that contention moves much less.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

/// The docker-registry fixture of the integration tests (it calls `tool` and `free_port`
/// of its parent module).
#[path = "../tests/common/docker_registry.rs"]
#[allow(dead_code)]
mod docker_registry;

#[path = "../tests/common/tools.rs"]
mod tools;
use tools::{free_port, tool};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use docker_registry::DockerRegistry;
use kiln::oci::digest::Digest;

/// One server under test: its base URL and process.
struct Target {
    base: String,
    pid: u32,
}

/// Kiln's cache service as a child process on a free port; killed on drop.
struct KilnProcess {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl KilnProcess {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the kiln store");
        // Another process may take the probed port before kiln binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args(["cache", "serve", "--gc-interval", "0s", "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--root")
                .arg(dir.path().join("store"))
                .env("RUST_LOG", "error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start kiln cache serve");
            if wait_ready(&mut child, port) {
                return Self {
                    child,
                    port,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("kiln cache serve did not start");
    }
}

/// Whether the child answers on `port` before it exits or 30 s pass.
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for KilnProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic bytes (xorshift), different for every seed.
fn blob(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Pushes every blob of `blobs[client]` from `clients` parallel clients; returns the time.
async fn push(http: &reqwest::Client, target: &Target, blobs: &[Vec<(Bytes, Digest)>]) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (client, own) in blobs.iter().enumerate() {
        let (http, base, own) = (http.clone(), target.base.clone(), own.clone());
        tasks.push(tokio::spawn(async move {
            let repo = format!("bench/client-{client}");
            for (bytes, digest) in own {
                let start = http
                    .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                    .send()
                    .await
                    .expect("start an upload");
                assert_eq!(start.status(), 202, "POST uploads");
                let location = start.headers()["location"].to_str().unwrap().to_owned();
                let url = if location.starts_with("http") {
                    location
                } else {
                    format!("{base}{location}")
                };
                let separator = if url.contains('?') { '&' } else { '?' };
                let done = http
                    .put(format!("{url}{separator}digest={digest}"))
                    .header("content-type", "application/octet-stream")
                    .body(bytes)
                    .send()
                    .await
                    .expect("upload a blob");
                assert_eq!(done.status(), 201, "PUT upload");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a push client");
    }
    started.elapsed()
}

/// Pulls every blob back from the same parallel clients; returns the time.
async fn pull(http: &reqwest::Client, target: &Target, blobs: &[Vec<(Bytes, Digest)>]) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (client, own) in blobs.iter().enumerate() {
        let (http, base) = (http.clone(), target.base.clone());
        let own: Vec<(usize, Digest)> = own.iter().map(|(b, d)| (b.len(), *d)).collect();
        tasks.push(tokio::spawn(async move {
            let repo = format!("bench/client-{client}");
            for (len, digest) in own {
                let mut response = http
                    .get(format!("{base}/v2/{repo}/blobs/{digest}"))
                    .send()
                    .await
                    .expect("pull a blob");
                assert_eq!(response.status(), 200, "GET blob");
                let mut received = 0;
                while let Some(chunk) = response.chunk().await.expect("read a blob") {
                    received += chunk.len();
                }
                assert_eq!(received, len, "bytes pulled");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a pull client");
    }
    started.elapsed()
}

fn main() {
    let blob_mb = common::size("KILN_BENCH_BLOB_MB", 64, 1) as usize;
    let clients = common::size("KILN_BENCH_CLIENTS", 4, 2) as usize;
    let per_client = common::size("KILN_BENCH_BLOBS_PER_CLIENT", 2, 1) as usize;
    let rounds = common::size("KILN_BENCH_ROUNDS", 3, 1);
    kiln::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let distribution = DockerRegistry::start();
    let kiln = KilnProcess::start();
    let targets = [
        Target {
            base: distribution.url(),
            pid: distribution.pid().expect("docker-registry runs"),
        },
        Target {
            base: format!("http://127.0.0.1:{}", kiln.port),
            pid: kiln.child.id(),
        },
    ];
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("bench HTTP client");
    let total = (blob_mb << 20) as f64 * (clients * per_client) as f64;
    let mut best = [[Duration::MAX; 2]; 2];
    // CPU time per server and phase, summed over the rounds.
    let mut cpu = [[Duration::ZERO; 2]; 2];
    for round in 0..rounds {
        for (at, target) in targets.iter().enumerate() {
            // Fresh content every round and server: a push of present content would take a
            // shortcut on either side.
            let blobs: Vec<Vec<(Bytes, Digest)>> = (0..clients)
                .map(|client| {
                    (0..per_client)
                        .map(|i| {
                            let seed = ((round * 2 + at as u64) << 32) | ((client * 64 + i) as u64);
                            let bytes = blob(seed, blob_mb << 20);
                            let digest = Digest::of(&bytes);
                            (bytes, digest)
                        })
                        .collect()
                })
                .collect();
            let before = common::cpu_time(target.pid);
            let pushed = runtime.block_on(push(&http, target, &blobs));
            let between = common::cpu_time(target.pid);
            let pulled = runtime.block_on(pull(&http, target, &blobs));
            cpu[at][0] += between.saturating_sub(before);
            cpu[at][1] += common::cpu_time(target.pid).saturating_sub(between);
            best[at][0] = best[at][0].min(pushed);
            best[at][1] = best[at][1].min(pulled);
        }
    }
    let mib_s = |d: Duration| total / d.as_secs_f64() / f64::from(1 << 20);
    println!(
        "registry_throughput: {clients} clients × {per_client} blobs × {blob_mb} MiB, loopback, best of {rounds}{}",
        if common::full_run() {
            ""
        } else {
            "  [smoke run]"
        }
    );
    for (what, index) in [("push", 0), ("pull", 1)] {
        let (theirs, ours) = (best[0][index], best[1][index]);
        println!(
            "  {what}: docker-registry {:8.1} MiB/s   kiln {:8.1} MiB/s   ratio {:.2}× (target ≥ 2.00×)",
            mib_s(theirs),
            mib_s(ours),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
        let (their_cpu, our_cpu) = (cpu[0][index], cpu[1][index]);
        println!(
            "        CPU seconds, all rounds: docker-registry {:.2}   kiln {:.2}   ratio {:.2}×",
            their_cpu.as_secs_f64(),
            our_cpu.as_secs_f64(),
            their_cpu.as_secs_f64() / our_cpu.as_secs_f64().max(0.01)
        );
    }
    drop(kiln);
    drop(distribution);
}
