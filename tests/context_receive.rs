//! `kiln context receive`, the real binary, against Kiln's own cache service over real
//! sockets: uploads in chunks, contexts found in the cache, refused uploads and chunks, the
//! wait running out, and two receivers of one attempt (test-only I/O: processes, sockets,
//! temp dirs).
//!
//! Each receiver listens on `127.0.0.1:0` and the test reads the bound address from its
//! JSON log, so that no port is guessed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::kiln_server::{self, KilnServer};
use kiln::cacheapi::token::TokenAction;
use kiln::context::artifact::context_manifest;
use kiln::context::protocol::{
    CHUNK_PATH, DONE_PATH, STATUS_PATH, UploadError, UploadState, UploadStatus,
};
use kiln::context::{PackOptions, load_dockerignore, pack};
use kiln::oci::digest::Digest;
use kiln::oci::media::OCI_MANIFEST;
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};

const REPOSITORY: &str = "team-a/kiln_contexts";

/// How long a receiver may take to start, finish, or reach a state.
const PATIENCE: Duration = Duration::from_secs(60);

/// A packed test directory: its files, and the tar of them.
struct Context {
    root: tempfile::TempDir,
    tar: Vec<u8>,
    digest: Digest,
}

impl Context {
    /// A tree with nested files, an executable, a symlink and a file of a few hundred KiB
    /// (so that an upload takes many chunks), varied by `seed`.
    fn pack(seed: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let write = |rel: &str, bytes: &[u8]| {
            let path = root.path().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        };
        write("Dockerfile", b"FROM scratch\nCOPY . /\n");
        write(
            "src/main.rs",
            format!("// {seed}\nfn main() {{}}\n").as_bytes(),
        );
        write("src/lib/util.rs", b"pub fn f() {}\n");
        write("scripts/run.sh", b"#!/bin/sh\necho hi\n");
        let big: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed.len() as u8)
            .collect();
        write("assets/blob.bin", &big);
        fs::set_permissions(
            root.path().join("scripts/run.sh"),
            fs::Permissions::from_mode(0o775),
        )
        .unwrap();
        symlink("src/main.rs", root.path().join("main-link")).unwrap();
        let ignore = load_dockerignore(root.path(), "Dockerfile").unwrap();
        let mut tar = Vec::new();
        let report = pack(root.path(), &ignore, &PackOptions::default(), &mut tar).unwrap();
        assert_eq!(report.digest, Digest::of(&tar));
        Self {
            root,
            digest: report.digest,
            tar,
        }
    }

    fn size(&self) -> u64 {
        self.tar.len() as u64
    }

    /// Checks that `dest` holds exactly this context: contents, normalised modes, links.
    fn assert_unpacked_in(&self, dest: &Path) {
        for rel in [
            "Dockerfile",
            "src/main.rs",
            "src/lib/util.rs",
            "scripts/run.sh",
            "assets/blob.bin",
        ] {
            assert_eq!(
                fs::read(dest.join(rel)).unwrap(),
                fs::read(self.root.path().join(rel)).unwrap(),
                "{rel}"
            );
        }
        let mode = |rel: &str| {
            fs::symlink_metadata(dest.join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        // The packer's modes: 0755 for executables and directories, 0644 for the rest.
        assert_eq!(mode("scripts/run.sh"), 0o755);
        assert_eq!(mode("Dockerfile"), 0o644);
        assert_eq!(mode("src/lib"), 0o755);
        assert_eq!(
            fs::read_link(dest.join("main-link")).unwrap(),
            Path::new("src/main.rs")
        );
        let mut top: Vec<String> = fs::read_dir(dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["Dockerfile", "assets", "main-link", "scripts", "src"],
            "nothing else in the destination"
        );
    }
}

fn http() -> reqwest::Client {
    kiln::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// How a receiver is started.
struct Setup<'a> {
    tag: &'a str,
    digest: Digest,
    size: u64,
    wait: &'a str,
    poll: &'a str,
    /// A Docker config directory for `DOCKER_CONFIG`.
    docker_config: Option<&'a Path>,
}

impl<'a> Setup<'a> {
    fn of(context: &Context, tag: &'a str) -> Self {
        Self {
            tag,
            digest: context.digest,
            size: context.size(),
            wait: "60s",
            poll: "200ms",
            docker_config: None,
        }
    }
}

/// A running `kiln context receive`, killed on drop.
struct Receiver {
    child: Child,
    base: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start(server: &KilnServer, setup: Setup<'_>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command
            .args(["--log-format", "json", "context", "receive", "--registry"])
            .arg(server.url())
            .args(["--repository", REPOSITORY, "--tag", setup.tag, "--digest"])
            .arg(setup.digest.to_string())
            .arg("--size")
            .arg(setup.size.to_string())
            .arg("--dest")
            .arg(dir.path().join("workspace/context"))
            .args(["--listen", "127.0.0.1:0", "--wait", setup.wait, "--poll"])
            .arg(setup.poll)
            .arg("--termination-log")
            .arg(dir.path().join("termination-log"))
            .env_remove("DOCKER_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(config) = setup.docker_config {
            command.env("DOCKER_CONFIG", config);
        }
        let mut child = command.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        let tag = setup.tag.to_owned();
        tokio::spawn(async move {
            let mut address_tx = Some(address_tx);
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                eprintln!("[{tag}] {line}");
                let listen = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["fields"]["listen"].as_str().map(str::to_owned));
                if let Some(listen) = listen
                    && let Some(tx) = address_tx.take()
                {
                    let _ = tx.send(listen.parse::<SocketAddr>().unwrap());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let address = tokio::time::timeout(PATIENCE, address_rx)
            .await
            .expect("the receiver logs its address")
            .expect("the receiver logs its address before exiting");
        Self {
            child,
            base: format!("http://{address}"),
            http: http(),
            dir,
            log,
        }
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("workspace/context")
    }

    fn termination_log(&self) -> PathBuf {
        self.dir.path().join("termination-log")
    }

    async fn status(&self) -> UploadStatus {
        let response = self
            .http
            .get(format!("{}{STATUS_PATH}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Polls the status until it is `state`.
    async fn reach(&self, state: UploadState) -> UploadStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let status = self.status().await;
            if status.state == state {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still {status:?}, not {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn chunk(&self, offset: u64, bytes: &[u8]) -> (StatusCode, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}{CHUNK_PATH}?offset={offset}", self.base))
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn done(&self) -> (StatusCode, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}{DONE_PATH}", self.base))
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// Sends `tar` in chunks of `chunk` bytes, each answered 200 with the new count.
    async fn upload(&self, tar: &[u8], chunk: usize) {
        let mut offset = 0;
        for piece in tar.chunks(chunk) {
            let (code, body) = self.chunk(offset, piece).await;
            assert_eq!(code, StatusCode::OK, "{body}");
            offset += piece.len() as u64;
            let status: UploadStatus = serde_json::from_value(body).unwrap();
            assert_eq!(status.received, offset);
            assert_eq!(status.state, UploadState::Waiting);
        }
    }

    /// Waits for the process to exit; returns its status, stdout and log lines. The
    /// receiver's directory stays until it is dropped.
    async fn finish(&mut self) -> (ExitStatus, String, Vec<String>) {
        let mut stdout = self.child.stdout.take().unwrap();
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the receiver exits")
            .unwrap();
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.unwrap();
        // The stderr reader may still be draining the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = self.log.lock().unwrap().clone();
        (status, out, log)
    }
}

/// What the cache serves at the tag, and whether it holds the blob.
async fn assert_cached(server: &KilnServer, tag: &str, context: &Context) {
    let http = http();
    let blob = http
        .head(format!(
            "{}/v2/{REPOSITORY}/blobs/{}",
            server.url(),
            context.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(
        blob.headers()["content-length"].to_str().unwrap(),
        context.size().to_string()
    );
    let manifest = http
        .get(format!("{}/v2/{REPOSITORY}/manifests/{tag}", server.url()))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), StatusCode::OK);
    let bytes = manifest.bytes().await.unwrap();
    assert_eq!(bytes, context_manifest(&context.digest, context.size()));
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(value["layers"][0]["digest"], context.digest.to_string());
    assert_eq!(value["layers"][0]["size"], context.size());
}

fn error_of(body: serde_json::Value) -> UploadError {
    serde_json::from_value(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_chunks_is_stored_tagged_and_unpacked() {
    let server = KilnServer::start(kiln_server::Config::default()).await;
    let context = Context::pack("upload");
    let mut receiver = Receiver::start(&server, Setup::of(&context, "build-a")).await;
    let waiting = receiver.reach(UploadState::Waiting).await;
    assert_eq!(
        (waiting.received, waiting.size, waiting.digest),
        (0, context.size(), context.digest)
    );

    receiver.upload(&context.tar, 64 * 1024).await;
    let (code, body) = receiver.done().await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let status: UploadStatus = serde_json::from_value(body).unwrap();
    assert_eq!(status.state, UploadState::Done);
    assert!(!status.from_cache);
    assert_eq!(status.received, context.size());

    context.assert_unpacked_in(&receiver.dest());
    assert_cached(&server, "build-a", &context).await;
    // Polled during the grace, the receiver still says Done.
    assert_eq!(receiver.status().await.state, UploadState::Done);
    let dir = receiver.dir.path().to_owned();
    let (exit, stdout, log) = receiver.finish().await;
    assert!(exit.success(), "{exit}");
    assert!(
        stdout.starts_with(&format!("received {} (", context.digest))
            && stdout.contains("from an upload"),
        "{stdout}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("receiving the upload") && l.contains("\"percent\":100")),
        "progress is logged"
    );
    assert!(
        !dir.join("workspace/.kiln-receive").exists(),
        "work files removed"
    );
    assert!(
        !dir.join("termination-log").exists(),
        "no message on success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_already_in_the_cache_is_taken_from_it_without_an_upload() {
    let server = KilnServer::start(kiln_server::Config::default()).await;
    let context = Context::pack("cached");
    let mut first = Receiver::start(&server, Setup::of(&context, "build-first")).await;
    first.reach(UploadState::Waiting).await;
    first.upload(&context.tar, 256 * 1024).await;
    assert_eq!(first.done().await.0, StatusCode::OK);
    assert!(first.finish().await.0.success());

    let mut second = Receiver::start(&server, Setup::of(&context, "build-second")).await;
    let status = second.reach(UploadState::Done).await;
    assert!(status.from_cache, "{status:?}");
    context.assert_unpacked_in(&second.dest());
    assert_cached(&server, "build-second", &context).await;
    assert_cached(&server, "build-first", &context).await;
    // A chunk sent late is answered with Done, and changes nothing.
    let (code, body) = second.chunk(0, b"late").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "done");
    let (exit, stdout, _) = second.finish().await;
    assert!(exit.success(), "{exit}");
    assert!(stdout.contains("from the cache"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_are_refused_and_a_correct_upload_then_succeeds() {
    let server = KilnServer::start(kiln_server::Config::default()).await;
    let context = Context::pack("wrong");
    let mut receiver = Receiver::start(&server, Setup::of(&context, "build-c")).await;
    receiver.reach(UploadState::Waiting).await;

    // The same size, one byte changed: as if a file changed while it was being sent.
    let mut wrong = context.tar.clone();
    wrong[1000] ^= 0xff;
    receiver.upload(&wrong, 100 * 1024).await;
    let (code, body) = receiver.done().await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let error = error_of(body);
    assert_eq!(
        error.message,
        format!(
            "the uploaded tar is {size} bytes with digest {}, but the Build declared {size} bytes with digest {}: the directory changed while it was being sent; run the command again",
            Digest::of(&wrong),
            context.digest,
            size = context.size()
        )
    );
    let status = error.status.unwrap();
    assert_eq!((status.state, status.received), (UploadState::Waiting, 0));

    // More bytes than declared are refused at the chunk that overflows.
    let (code, body) = receiver.chunk(0, &vec![0; context.tar.len() + 1]).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        error_of(body)
            .message
            .contains(&format!("but the Build declared {}", context.size()))
    );
    assert_eq!(receiver.status().await.received, 0);

    receiver.upload(&context.tar, 100 * 1024).await;
    let (code, body) = receiver.done().await;
    assert_eq!(code, StatusCode::OK, "{body}");
    context.assert_unpacked_in(&receiver.dest());
    assert_cached(&server, "build-c", &context).await;
    assert!(receiver.finish().await.0.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_refused_with_the_expected_offset_and_a_resent_chunk_is_harmless() {
    let server = KilnServer::start(kiln_server::Config::default()).await;
    let context = Context::pack("gap");
    let mut receiver = Receiver::start(&server, Setup::of(&context, "build-d")).await;
    receiver.reach(UploadState::Waiting).await;
    let (head, rest) = context.tar.split_at(4096);
    receiver.upload(head, 4096).await;

    let (code, body) = receiver.chunk(8192, &rest[4096..8192]).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    let error = error_of(body);
    assert_eq!(
        error.message,
        "a chunk of 4096 bytes at offset 8192 does not continue the upload: send the chunk at offset 4096"
    );
    assert_eq!(error.status.unwrap().received, 4096);

    // The first chunk again, as after a lost answer: acknowledged, not appended.
    let (code, body) = receiver.chunk(0, head).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["received"], 4096);

    let (code, body) = receiver.chunk(4096, rest).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(receiver.done().await.0, StatusCode::OK);
    context.assert_unpacked_in(&receiver.dest());
    assert!(receiver.finish().await.0.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_upload_the_receiver_gives_up_and_says_why() {
    let server = KilnServer::start(kiln_server::Config::default()).await;
    let context = Context::pack("never");
    let setup = Setup {
        wait: "2s",
        ..Setup::of(&context, "build-e")
    };
    let mut receiver = Receiver::start(&server, setup).await;
    receiver.reach(UploadState::Waiting).await;
    let log_path = receiver.termination_log();
    let (exit, stdout, log) = receiver.finish().await;
    assert_eq!(exit.code(), Some(1), "{log:?}");
    assert!(stdout.is_empty(), "{stdout}");
    let want = "no context was uploaded within 2s: run kubectl kiln build --local again, or delete the Build";
    assert_eq!(fs::read_to_string(&log_path).unwrap(), want);
    assert!(log.iter().any(|line| line.contains(want)), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_receiver_of_the_attempt_takes_the_context_another_stored() {
    let server = KilnServer::start(kiln_server::Config::default()).await;
    let context = Context::pack("pair");
    let mut amd64 = Receiver::start(&server, Setup::of(&context, "build-f")).await;
    let mut arm64 = Receiver::start(&server, Setup::of(&context, "build-f")).await;
    amd64.reach(UploadState::Waiting).await;
    arm64.reach(UploadState::Waiting).await;

    amd64.upload(&context.tar, 128 * 1024).await;
    let (code, body) = amd64.done().await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["fromCache"], false);

    let status = arm64.reach(UploadState::Done).await;
    assert!(status.from_cache, "{status:?}");
    context.assert_unpacked_in(&amd64.dest());
    context.assert_unpacked_in(&arm64.dest());
    assert_cached(&server, "build-f", &context).await;
    let (first, second) = tokio::join!(amd64.finish(), arm64.finish());
    assert!(first.0.success() && second.0.success());
    assert!(
        second
            .2
            .iter()
            .any(|l| l.contains("another pod stored the context")),
        "{:?}",
        second.2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_token_from_the_docker_config_is_used() {
    let server = KilnServer::start(kiln_server::Config {
        tokens: true,
        ..kiln_server::Config::default()
    })
    .await;
    let context = Context::pack("token");
    let token = kiln_server::token(
        "team-a",
        &[TokenAction::Pull, TokenAction::Push],
        &kiln_server::key(),
    );
    let config = tempfile::tempdir().unwrap();
    fs::write(
        config.path().join("config.json"),
        serde_json::json!({"auths": {server.host(): {"auth": STANDARD.encode(format!("kiln:{token}"))}}})
            .to_string(),
    )
    .unwrap();
    let setup = Setup {
        docker_config: Some(config.path()),
        ..Setup::of(&context, "build-g")
    };
    let mut receiver = Receiver::start(&server, setup).await;
    receiver.reach(UploadState::Waiting).await;
    receiver.upload(&context.tar, 256 * 1024).await;
    let (code, body) = receiver.done().await;
    assert_eq!(code, StatusCode::OK, "{body}");
    context.assert_unpacked_in(&receiver.dest());
    assert!(receiver.finish().await.0.success());

    // A token of another namespace is refused at the first look, and the message says so.
    let other = kiln_server::token(
        "team-b",
        &[TokenAction::Pull, TokenAction::Push],
        &kiln_server::key(),
    );
    fs::write(
        config.path().join("config.json"),
        serde_json::json!({"auths": {server.host(): {"auth": STANDARD.encode(format!("kiln:{other}"))}}})
            .to_string(),
    )
    .unwrap();
    let setup = Setup {
        docker_config: Some(config.path()),
        ..Setup::of(&context, "build-h")
    };
    let mut receiver = Receiver::start(&server, setup).await;
    let log_path = receiver.termination_log();
    let (exit, _, log) = receiver.finish().await;
    assert_eq!(exit.code(), Some(1), "{log:?}");
    let message = fs::read_to_string(&log_path).unwrap();
    assert!(
        message.starts_with(&format!(
            "cannot look for the context {} in the cache: the cache refused access (403)",
            context.digest
        )),
        "{message}"
    );
}
