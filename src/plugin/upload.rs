//! `kubectl kiln build --local`'s I/O: packs the directory, creates the Build, finds the pod
//! that receives its context, and sends the tar there in chunks through the API server's
//! `pods/proxy` (I/O: the filesystem and the Kubernetes API; every decision is
//! [`super::local`]'s, the wire protocol [`crate::context::protocol`]'s).
//!
//! # Memory
//! The directory is packed twice: once to learn the digest and size the Build declares
//! (into a sink that only counts and hashes), then again while uploading, on a blocking
//! thread that hands [`CHUNK_BYTES`] chunks over a channel of two. So at most about four
//! chunks are held (the one being cut, two queued, the one in flight), whatever the size
//! of the context. A resumed upload packs again from the start and skips what the receiver
//! already has; the second pack's digest is compared with the first's before `done`, so a
//! tree that changed meanwhile is reported here, not only by the receiver.
//!
//! # RBAC
//! In the Build's namespace: `create` and `get` on `builds` (kiln.dev), `list` on `pods`,
//! `get` and `create` on `pods/proxy`; with `--follow` also `get` on `pods` and
//! `pods/log`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

// kube's requests are the `http` crate's, which axum re-exports.
use axum::http::{Method, Request, header};
use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::client::Body;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::api::{FIELD_MANAGER, LogRequest, attempt_pod, get_build, logs_of};
use super::error::PluginError;
use super::local::{
    Answer, BuildEnd, LocalBuildArgs, ReceiverStep, StatusAction, Transfer, build_end, classify,
    describe_end, dockerfile_path, final_report, local_build, on_status, pack_summary,
    plain_report_due, progress_text, receiver_step, retry_delay, upload_summary,
};
use crate::context::protocol::{
    CHUNK_BYTES, CHUNK_PATH, DONE_PATH, RECEIVER_PORT, STATUS_PATH, UploadState, UploadStatus,
};
use crate::context::{PackError, PackOptions, PackReport, load_dockerignore, pack};
use crate::controller::labels::build_uid_selector;
use crate::controller::podstate::BUILD_CONTAINER;
use crate::crd::{Build, Phase, Reason};
use crate::oci::digest::Digest;
use crate::report::error_chain;

/// How many times a chunk (or `done`) is retried after a transient failure before the
/// receiver is looked for again.
const RETRIES: u32 = 4;

/// How many times the receiver may send the upload back to another offset.
const MAX_RESTARTS: u32 = 5;

/// The longest a status request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest one chunk may take to be sent and answered.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The longest `done` may take: the receiver checks, stores and unpacks the whole context
/// before it answers.
const DONE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Where `build --local` writes.
pub struct Console<'a> {
    /// The result: the Build's name, and with `--follow` its log and its end.
    pub out: &'a mut (dyn Write + Send),
    /// Notes and progress.
    pub err: &'a mut (dyn Write + Send),
    /// Whether `err` is a terminal: then progress is one line rewritten in place,
    /// otherwise a line every tenth of the upload.
    pub err_is_terminal: bool,
}

/// What `build --local` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBuildOutcome {
    /// The Build's namespace.
    pub namespace: String,
    /// The Build's name.
    pub name: String,
    /// The digest of the context's tar.
    pub digest: Digest,
    /// The tar's size in bytes.
    pub size: u64,
    /// Bytes uploaded (0 when the cache had the context).
    pub bytes_sent: u64,
    /// From sending the first chunk to the receiver's answer to the last one (zero when
    /// nothing was sent): the transfer, without the receiver's checking and storing.
    pub upload_duration: Duration,
    /// From the command's start to the first chunk sent (or, when nothing was sent, to the
    /// receiver saying it had the context): packing, the Build's creation, scheduling and
    /// the receiver's start.
    pub until_receiver: Duration,
    /// With `--follow`: how the Build ended.
    pub end: Option<BuildEnd>,
}

/// Runs `kubectl kiln build --local` in `namespace`: checks and packs the directory,
/// creates the Build, uploads its context unless the cache has it, and with
/// `args.follow` streams its log and waits for it to end.
///
/// It neither reads a kubeconfig nor exits: a Build that ends before it received its
/// context, or any failure, is an error; a Build that ends otherwise than `Succeeded` under
/// `--follow` is an outcome whose [`LocalBuildOutcome::end`] says so.
pub async fn build_local(
    client: Client,
    namespace: &str,
    args: &LocalBuildArgs,
    console: &mut Console<'_>,
) -> Result<LocalBuildOutcome, PluginError> {
    let began = Instant::now();
    let context = LocalContext::open(args)?;
    let report = context
        .finish_pack(context.spawn_pack(args.max_size, io::sink()).await)
        .map_err(|e| context.pack_error(e, args.max_size))?;
    note(console.err, &pack_summary(&context.shown, &report))?;
    let build = local_build(
        args,
        namespace,
        &context.dir_name,
        &context.dockerfile,
        &report.digest,
        report.tar_bytes,
    );
    let build = create(&client, namespace, &build).await?;
    let name = build.name_any();
    note(console.err, &format!("build.kiln.dev/{name} created"))?;
    let mut upload = Upload {
        client: &client,
        namespace,
        name: name.clone(),
        uid: build.uid().unwrap_or_default(),
        context: &context,
        digest: report.digest,
        size: report.tar_bytes,
        max_size: args.max_size,
        wait: args.wait,
        poll: args.poll,
        sent: 0,
        started: None,
        finished: None,
        last_tenth: 0,
        line_open: false,
        said: None,
        progressed: Instant::now(),
    };
    upload.deliver(console).await?;
    let until_receiver = upload
        .started
        .unwrap_or_else(Instant::now)
        .duration_since(began);
    upload.close_line(console)?;
    let upload_duration = match (upload.started, upload.finished) {
        (Some(start), Some(end)) => end.duration_since(start),
        _ => Duration::ZERO,
    };
    if upload.sent == 0 {
        note(
            console.err,
            "the context is already in the cache: nothing to send",
        )?;
    } else {
        note(console.err, &upload_summary(upload.sent, upload_duration))?;
    }
    let end = if args.follow {
        let end = follow(&client, namespace, &name, args.poll, console).await?;
        write_out(console.out, &final_report(namespace, &name, &end))?;
        Some(end)
    } else {
        write_out(
            console.out,
            &format!(
                "build {name} created; follow it with: kubectl kiln logs -f {name} -n {namespace}\n"
            ),
        )?;
        None
    };
    Ok(LocalBuildOutcome {
        namespace: namespace.to_owned(),
        name,
        digest: report.digest,
        size: report.tar_bytes,
        bytes_sent: upload.sent,
        upload_duration,
        until_receiver,
        end,
    })
}

fn note(err: &mut (dyn Write + Send), line: &str) -> Result<(), PluginError> {
    writeln!(err, "{line}")
        .and_then(|()| err.flush())
        .map_err(PluginError::Write)
}

fn write_out(out: &mut (dyn Write + Send), text: &str) -> Result<(), PluginError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(PluginError::Write)
}

/// The directory to pack, checked.
#[derive(Clone, Debug)]
struct LocalContext {
    /// The directory, absolute and without symlinks.
    dir: PathBuf,
    /// The directory as given, for messages.
    shown: String,
    /// Its last component, for the generated name.
    dir_name: String,
    /// The Dockerfile relative to it, cleaned.
    dockerfile: String,
}

/// Checks that `dir` is a directory holding the Dockerfile `dockerfile` (relative to it),
/// before anything talks to the cluster: a mistyped path is reported as such, even without
/// a kubeconfig.
pub fn check_context(dir: &std::path::Path, dockerfile: &str) -> Result<(), PluginError> {
    LocalContext::open(&LocalBuildArgs {
        dir: dir.to_owned(),
        dockerfile: dockerfile.to_owned(),
        ..LocalBuildArgs::default()
    })
    .map(drop)
}

impl LocalContext {
    /// Checks that `args.dir` is a directory holding the Dockerfile.
    fn open(args: &LocalBuildArgs) -> Result<Self, PluginError> {
        let shown = args.dir.display().to_string();
        let dir_error = |why: String| PluginError::ContextDir {
            dir: shown.clone(),
            why,
        };
        let dir = args.dir.canonicalize().map_err(|e| dir_error(io_why(&e)))?;
        if !dir.is_dir() {
            return Err(dir_error("is not a directory".to_owned()));
        }
        let dockerfile = dockerfile_path(&args.dockerfile)?;
        let dockerfile_error = |why: String| PluginError::Dockerfile {
            dir: shown.clone(),
            dockerfile: dockerfile.clone(),
            why,
        };
        let path = dir.join(&dockerfile);
        let meta = std::fs::metadata(&path).map_err(|e| dockerfile_error(io_why(&e)))?;
        if !meta.is_file() {
            return Err(dockerfile_error("is not a file".to_owned()));
        }
        // A symlink is packed as a symlink: one leading out of the directory would dangle
        // in the build pod.
        let real = path
            .canonicalize()
            .map_err(|e| dockerfile_error(io_why(&e)))?;
        if !real.starts_with(&dir) {
            return Err(dockerfile_error(format!(
                "is a symlink to {}, outside the context",
                real.display()
            )));
        }
        let dir_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            dir,
            shown,
            dir_name,
            dockerfile,
        })
    }

    /// Packs the directory into `out` on a blocking thread.
    fn spawn_pack<W: Write + Send + 'static>(
        &self,
        max_size: u64,
        out: W,
    ) -> JoinHandle<Result<PackReport, PackError>> {
        let dir = self.dir.clone();
        let dockerfile = self.dockerfile.clone();
        tokio::task::spawn_blocking(move || {
            let ignore = load_dockerignore(&dir, &dockerfile)?;
            let options = PackOptions {
                max_bytes: Some(max_size),
            };
            pack(&dir, &ignore, &options, out)
        })
    }

    /// The report of a finished packing task, or why there is none.
    fn finish_pack(
        &self,
        joined: Result<Result<PackReport, PackError>, tokio::task::JoinError>,
    ) -> Result<PackReport, PackOrAbort> {
        match joined {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(PackOrAbort::Pack(e)),
            Err(e) => Err(PackOrAbort::Abort(e.to_string())),
        }
    }

    fn pack_error(&self, error: PackOrAbort, max_size: u64) -> PluginError {
        match error {
            PackOrAbort::Pack(PackError::TooLarge {
                limit: _,
                reached,
                largest,
            }) => PluginError::ContextTooLarge {
                dir: self.shown.clone(),
                limit: max_size,
                reached,
                largest,
            },
            PackOrAbort::Pack(source) => PluginError::Pack {
                dir: self.shown.clone(),
                source,
            },
            PackOrAbort::Abort(why) => PluginError::PackAborted {
                dir: self.shown.clone(),
                why,
            },
        }
    }
}

/// A packing task's failure.
enum PackOrAbort {
    Pack(PackError),
    Abort(String),
}

/// Why reading the Build or its pods failed, when it is worth trying again.
fn observing_blip(error: &PluginError) -> Option<String> {
    match error {
        PluginError::GetBuild { source, .. } | PluginError::ListPods { source, .. }
            if transient(source) =>
        {
            Some(match &**source {
                kube::Error::Api(status) => format!("{} {}", status.code, status.message),
                other => error_chain(other),
            })
        }
        _ => None,
    }
}

/// Whether a failed API call is worth trying again: no connection, or the server busy.
fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => false,
    }
}

fn io_why(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "does not exist".to_owned(),
        _ => error.to_string(),
    }
}

/// Creates the Build; an existing one of the same name is [`PluginError::BuildExists`].
async fn create(client: &Client, namespace: &str, build: &Build) -> Result<Build, PluginError> {
    let api: Api<Build> = Api::namespaced(client.clone(), namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let name = build
        .metadata
        .name
        .clone()
        .or_else(|| {
            build
                .metadata
                .generate_name
                .as_ref()
                .map(|g| format!("{g}…"))
        })
        .unwrap_or_default();
    api.create(&params, build)
        .await
        .map_err(|source| match source {
            kube::Error::Api(status) if status.code == 409 => PluginError::BuildExists {
                namespace: namespace.to_owned(),
                name,
            },
            source => PluginError::CreateBuild {
                namespace: namespace.to_owned(),
                name,
                source: Box::new(source),
            },
        })
}

/// A [`Write`] that cuts what is written into chunks of `chunk_bytes` and sends them over a
/// channel, after dropping the first `skip` bytes (what the receiver already has). A flush
/// sends what is buffered. Writing fails once the receiving end is gone.
struct ChunkWriter {
    tx: mpsc::Sender<Bytes>,
    skip: u64,
    chunk_bytes: usize,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<Bytes>, skip: u64, chunk_bytes: usize) -> Self {
        Self {
            tx,
            skip,
            chunk_bytes: chunk_bytes.max(1),
            buf: Vec::new(),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.skip > 0 {
            let n = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(data.len());
            self.skip -= n as u64;
            return Ok(n);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.chunk_bytes);
        }
        let n = (self.chunk_bytes - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk_bytes {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

/// The receiver of one pod, through the API server's `pods/proxy`.
struct Proxy<'a> {
    client: &'a Client,
    namespace: &'a str,
    pod: String,
}

impl Proxy<'_> {
    /// Sends one request and sorts its answer. Connection failures, timeouts and bodies cut
    /// short are [`Answer::Transient`]; other client errors end the upload.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, PluginError> {
        let request_text = format!("{method} {path}");
        let uri = format!(
            "/api/v1/namespaces/{}/pods/{}:{RECEIVER_PORT}/proxy{path}",
            self.namespace, self.pod
        );
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(body))
            .map_err(|e| PluginError::Proxy {
                namespace: self.namespace.to_owned(),
                pod: self.pod.clone(),
                request: request_text.clone(),
                source: Box::new(kube::Error::HttpError(e)),
            })?;
        let exchange = async {
            let response = self.client.send(request).await?;
            let code = response.status().as_u16();
            let body = response.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((code, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Ok(Answer::Transient(format!(
                "no answer within {}",
                crate::units::format_duration(timeout)
            ))),
            Ok(Ok((code, body))) => Ok(classify(code, &body)),
            Ok(Err(e @ (kube::Error::HyperError(_) | kube::Error::Service(_)))) => {
                Ok(Answer::Transient(error_chain(&e)))
            }
            Ok(Err(source)) => Err(PluginError::Proxy {
                namespace: self.namespace.to_owned(),
                pod: self.pod.clone(),
                request: request_text,
                source: Box::new(source),
            }),
        }
    }

    /// The error for an answer that ends the upload.
    fn fatal(&self, request: &str, verb: &'static str, answer: Answer) -> PluginError {
        let (code, text) = match answer {
            Answer::Forbidden(message) => {
                return PluginError::ProxyForbidden {
                    verb,
                    namespace: self.namespace.to_owned(),
                    pod: self.pod.clone(),
                    message,
                };
            }
            Answer::Refused(message) => {
                return PluginError::ContextRefused {
                    namespace: self.namespace.to_owned(),
                    pod: self.pod.clone(),
                    message,
                };
            }
            Answer::Unexpected(code, text) => (code, text),
            Answer::Status(status) => (200, format!("{status:?}")),
            Answer::Conflict(_, text) => (409, text),
            Answer::PodGone => (404, "the pod is gone".to_owned()),
            Answer::Transient(text) => (503, text),
        };
        PluginError::ReceiverAnswer {
            namespace: self.namespace.to_owned(),
            pod: self.pod.clone(),
            request: request.to_owned(),
            code,
            text,
        }
    }
}

/// How one try at sending the tar ended.
enum UploadEnd {
    /// The receiver stored the context.
    Done,
    /// The receiver expects another offset: ask it where it stands and go on from there.
    Restart(String),
    /// The pod went away or stopped answering: look for the receiver again.
    Again(String),
}

/// How sending one chunk ended.
enum ChunkEnd {
    Accepted(UploadStatus),
    Conflict(String),
    Lost(String),
}

/// One upload's state: the Build, the context, and the progress shown.
struct Upload<'a> {
    client: &'a Client,
    namespace: &'a str,
    name: String,
    uid: String,
    context: &'a LocalContext,
    digest: Digest,
    size: u64,
    max_size: u64,
    wait: Duration,
    poll: Duration,
    /// Bytes the receiver accepted from this command.
    sent: u64,
    /// When the first chunk was sent.
    started: Option<Instant>,
    /// When the receiver accepted the last chunk this command sent.
    finished: Option<Instant>,
    /// The last tenth reported when `err` is not a terminal.
    last_tenth: u64,
    /// Whether a progress line waits for its end on the terminal.
    line_open: bool,
    /// The last note, not repeated.
    said: Option<String>,
    /// The last time anything moved; the wait gives up [`Upload::wait`] after it.
    progressed: Instant,
}

impl Upload<'_> {
    /// Until the context is stored: finds the receiver, asks where it stands, and sends
    /// what it lacks.
    async fn deliver(&mut self, console: &mut Console<'_>) -> Result<(), PluginError> {
        let mut restarts = 0;
        loop {
            if self.progressed.elapsed() > self.wait {
                return Err(PluginError::ReceiverTimeout {
                    namespace: self.namespace.to_owned(),
                    name: self.name.clone(),
                    waited: self.wait,
                    last: self
                        .said
                        .clone()
                        .unwrap_or_else(|| "nothing happened".to_owned()),
                });
            }
            let observed = match get_build(self.client, self.namespace, &self.name).await {
                Ok(build) => self.pods().await.map(|pods| (build, pods)),
                Err(e) => Err(e),
            };
            let (build, pods) = match observed {
                Ok(observed) => observed,
                // A blip of the API server is not worth giving up a long wait for.
                Err(e) => match observing_blip(&e) {
                    Some(why) => {
                        self.wait_a_bit(console, format!("{e} ({why}); trying again"))
                            .await?;
                        continue;
                    }
                    None => return Err(e),
                },
            };
            // A Build queued behind others of its concurrency group waits as long as they
            // run: that is no reason to give up.
            if build.status.as_ref().and_then(|s| s.reason()) == Some(Reason::Queued) {
                self.progressed = Instant::now();
            }
            let pod = match receiver_step(&build, &pods) {
                ReceiverStep::Ended(end) => {
                    self.close_line(console)?;
                    return Err(PluginError::EndedBeforeUpload {
                        namespace: self.namespace.to_owned(),
                        name: self.name.clone(),
                        state: describe_end(&end),
                    });
                }
                ReceiverStep::Received => return Ok(()),
                ReceiverStep::Wait(why) => {
                    self.wait_a_bit(console, why).await?;
                    continue;
                }
                ReceiverStep::Receiver(pod) => pod,
            };
            let proxy = Proxy {
                client: self.client,
                namespace: self.namespace,
                pod,
            };
            let request = format!("GET {STATUS_PATH}");
            let status = match proxy
                .call(Method::GET, STATUS_PATH, Bytes::new(), STATUS_TIMEOUT)
                .await?
            {
                Answer::Status(status) => status,
                Answer::Transient(why) => {
                    let why = format!("waiting for pod {} to answer ({why})", proxy.pod);
                    self.wait_a_bit(console, why).await?;
                    continue;
                }
                Answer::PodGone => {
                    let why = format!("pod {} is gone; waiting for the next one", proxy.pod);
                    self.wait_a_bit(console, why).await?;
                    continue;
                }
                other => return Err(proxy.fatal(&request, "get", other)),
            };
            let end = match on_status(&proxy.pod, &status, &self.digest, self.size) {
                StatusAction::Done => return Ok(()),
                StatusAction::Poll(why) => {
                    self.wait_a_bit(console, why).await?;
                    continue;
                }
                StatusAction::Mismatch(why) => {
                    return Err(PluginError::ContextMismatch {
                        namespace: self.namespace.to_owned(),
                        name: self.name.clone(),
                        why,
                    });
                }
                StatusAction::Finish => self.finish(&proxy, console).await?,
                StatusAction::Upload { from } => {
                    let resume = if from > 0 {
                        format!(" (resuming at byte {from})")
                    } else {
                        String::new()
                    };
                    self.say(
                        console,
                        format!("sending the context to pod {}{resume}", proxy.pod),
                    )?;
                    self.send(&proxy, from, console).await?
                }
            };
            match end {
                UploadEnd::Done => return Ok(()),
                UploadEnd::Restart(why) => {
                    restarts += 1;
                    if restarts > MAX_RESTARTS {
                        self.close_line(console)?;
                        return Err(PluginError::UploadRestarts {
                            namespace: self.namespace.to_owned(),
                            name: self.name.clone(),
                            restarts: MAX_RESTARTS,
                            last: why,
                        });
                    }
                    self.say(console, why)?;
                }
                UploadEnd::Again(why) => self.wait_a_bit(console, why).await?,
            }
        }
    }

    async fn pods(&self) -> Result<Vec<Pod>, PluginError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), self.namespace);
        pods.list(&ListParams::default().labels(&build_uid_selector(&self.uid)))
            .await
            .map(|list| list.items)
            .map_err(|source| PluginError::ListPods {
                namespace: self.namespace.to_owned(),
                name: self.name.clone(),
                source: Box::new(source),
            })
    }

    /// Says `why` (once) and sleeps one poll.
    async fn wait_a_bit(
        &mut self,
        console: &mut Console<'_>,
        why: String,
    ) -> Result<(), PluginError> {
        self.say(console, why)?;
        tokio::time::sleep(self.poll).await;
        Ok(())
    }

    /// A note on `err`, unless it is the last one said.
    fn say(&mut self, console: &mut Console<'_>, why: String) -> Result<(), PluginError> {
        if self.said.as_ref() != Some(&why) {
            self.close_line(console)?;
            note(console.err, &format!("{why}…"))?;
            self.said = Some(why);
        }
        Ok(())
    }

    /// Ends the progress line on a terminal.
    fn close_line(&mut self, console: &mut Console<'_>) -> Result<(), PluginError> {
        if self.line_open {
            self.line_open = false;
            note(console.err, "")?;
        }
        Ok(())
    }

    fn show_progress(&mut self, console: &mut Console<'_>, offset: u64) -> Result<(), PluginError> {
        let transfer = Transfer {
            offset,
            total: self.size,
            sent: self.sent,
            elapsed: self.started.map(|s| s.elapsed()).unwrap_or_default(),
        };
        if console.err_is_terminal {
            write!(console.err, "\r{}\x1b[K", progress_text(&transfer))
                .and_then(|()| console.err.flush())
                .map_err(PluginError::Write)?;
            self.line_open = true;
        } else if let Some(tenth) = plain_report_due(self.last_tenth, &transfer) {
            self.last_tenth = tenth;
            note(console.err, &progress_text(&transfer))?;
        }
        Ok(())
    }

    /// Packs again and sends the tar from byte `from`, then `done`.
    async fn send(
        &mut self,
        proxy: &Proxy<'_>,
        from: u64,
        console: &mut Console<'_>,
    ) -> Result<UploadEnd, PluginError> {
        // Two queued chunks: the packer reads ahead while one is in flight, and no more.
        let (tx, mut rx) = mpsc::channel::<Bytes>(2);
        let packer = self
            .context
            .spawn_pack(self.max_size, ChunkWriter::new(tx, from, CHUNK_BYTES));
        self.started.get_or_insert_with(Instant::now);
        let mut offset = from;
        self.show_progress(console, offset)?;
        let stopped = loop {
            let Some(chunk) = rx.recv().await else {
                break None;
            };
            let len = chunk.len() as u64;
            if offset + len > self.size {
                // The receiver would refuse it: the tree grew since the first pack.
                break Some(Err(format!(
                    "they pack to more than the {} bytes the Build declares",
                    self.size
                )));
            }
            match self.send_chunk(proxy, offset, chunk).await? {
                ChunkEnd::Accepted(status) if status.state == UploadState::Done => {
                    // Another pod of the attempt stored the context meanwhile; this chunk
                    // was not needed.
                    break Some(Ok(UploadEnd::Done));
                }
                ChunkEnd::Accepted(status) => {
                    offset += len;
                    self.sent += len;
                    self.progressed = Instant::now();
                    self.finished = Some(self.progressed);
                    self.show_progress(console, offset)?;
                    if status.received != offset {
                        break Some(Ok(UploadEnd::Restart(format!(
                            "pod {} has {} bytes, not {offset}",
                            proxy.pod, status.received
                        ))));
                    }
                }
                ChunkEnd::Conflict(why) => break Some(Ok(UploadEnd::Restart(why))),
                ChunkEnd::Lost(why) => break Some(Ok(UploadEnd::Again(why))),
            }
        };
        // Dropping the receiving end stops a packer that is still writing.
        drop(rx);
        let packed = self.context.finish_pack(packer.await);
        let changed = |how: String| PluginError::ContextChanged {
            dir: self.context.shown.clone(),
            how,
        };
        match stopped {
            Some(Ok(end)) => {
                self.close_line(console)?;
                return Ok(end);
            }
            Some(Err(how)) => {
                self.close_line(console)?;
                return Err(changed(how));
            }
            None => {}
        }
        let report = packed.map_err(|e| self.context.pack_error(e, self.max_size))?;
        if report.digest != self.digest || report.tar_bytes != self.size {
            self.close_line(console)?;
            return Err(changed(format!(
                "they pack to {} of {} bytes now, the Build declares {} of {} bytes",
                report.digest, report.tar_bytes, self.digest, self.size
            )));
        }
        self.finish(proxy, console).await
    }

    /// Sends one chunk, retrying transient failures with backoff. A `400` is retried too:
    /// the other refusals the protocol answers with it (a chunk past the declared size, a
    /// chunk too large) cannot happen to a chunk this command sends, so it is a chunk that
    /// broke off on its way, which the receiver asks to send again.
    async fn send_chunk(
        &self,
        proxy: &Proxy<'_>,
        offset: u64,
        chunk: Bytes,
    ) -> Result<ChunkEnd, PluginError> {
        let path = format!("{CHUNK_PATH}?offset={offset}");
        let mut last = String::new();
        let mut refused = None;
        for try_ in 0..=RETRIES {
            if try_ > 0 {
                tokio::time::sleep(retry_delay(try_ - 1)).await;
            }
            match proxy
                .call(Method::POST, &path, chunk.clone(), CHUNK_TIMEOUT)
                .await?
            {
                Answer::Status(status) => return Ok(ChunkEnd::Accepted(status)),
                Answer::Conflict(Some(status), message) => {
                    return Ok(ChunkEnd::Conflict(format!(
                        "pod {}: {message}; resuming at byte {}",
                        proxy.pod, status.received
                    )));
                }
                Answer::Conflict(None, message) => {
                    return Ok(ChunkEnd::Conflict(format!("pod {}: {message}", proxy.pod)));
                }
                Answer::PodGone => {
                    return Ok(ChunkEnd::Lost(format!(
                        "pod {} is gone; waiting for the next one",
                        proxy.pod
                    )));
                }
                Answer::Transient(why) => {
                    last = why;
                    refused = None;
                }
                Answer::Refused(why) => refused = Some(why),
                other => return Err(proxy.fatal(&format!("POST {path}"), "create", other)),
            }
        }
        if let Some(why) = refused {
            return Err(proxy.fatal(&format!("POST {path}"), "create", Answer::Refused(why)));
        }
        Ok(ChunkEnd::Lost(format!(
            "pod {} did not take the bytes at {offset} ({last}); looking for the receiver again",
            proxy.pod
        )))
    }

    /// Sends `done`: the receiver checks the tar, stores and unpacks it.
    async fn finish(
        &mut self,
        proxy: &Proxy<'_>,
        console: &mut Console<'_>,
    ) -> Result<UploadEnd, PluginError> {
        self.close_line(console)?;
        self.say(
            console,
            format!("pod {} is checking and storing the context", proxy.pod),
        )?;
        let mut last = String::new();
        for try_ in 0..=RETRIES {
            if try_ > 0 {
                tokio::time::sleep(retry_delay(try_ - 1)).await;
            }
            match proxy
                .call(Method::POST, DONE_PATH, Bytes::new(), DONE_TIMEOUT)
                .await?
            {
                Answer::Status(status) if status.state == UploadState::Done => {
                    self.progressed = Instant::now();
                    return Ok(UploadEnd::Done);
                }
                // Storing, or still waiting: the status says what comes next.
                Answer::Status(_) => {
                    return Ok(UploadEnd::Again(format!(
                        "pod {} is storing the context",
                        proxy.pod
                    )));
                }
                // Not waiting (storing already, after a `done` whose answer was lost):
                // the status says what comes next.
                Answer::Conflict(_, message) => {
                    return Ok(UploadEnd::Again(format!("pod {}: {message}", proxy.pod)));
                }
                Answer::PodGone => {
                    return Ok(UploadEnd::Again(format!(
                        "pod {} is gone; waiting for the next one",
                        proxy.pod
                    )));
                }
                Answer::Transient(why) => last = why,
                other => return Err(proxy.fatal(&format!("POST {DONE_PATH}"), "create", other)),
            }
        }
        Ok(UploadEnd::Again(format!(
            "pod {} did not answer the end of the upload ({last})",
            proxy.pod
        )))
    }
}

/// `--follow`: streams the log of each attempt as `kubectl kiln logs -f` does, until the
/// Build ends. A `Native` build runs one pod per platform, so no single log is streamed;
/// the note says how to follow one.
async fn follow(
    client: &Client,
    namespace: &str,
    name: &str,
    poll: Duration,
    console: &mut Console<'_>,
) -> Result<BuildEnd, PluginError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut followed = 0;
    loop {
        let build = match get_build(client, namespace, name).await {
            Ok(build) => build,
            Err(e) => match observing_blip(&e) {
                Some(why) => {
                    note(console.err, &format!("{e} ({why}); trying again…"))?;
                    tokio::time::sleep(poll.max(Duration::from_secs(1))).await;
                    continue;
                }
                None => return Err(e),
            },
        };
        if let Some(end) = build_end(&build) {
            return Ok(end);
        }
        let attempt = build.status.as_ref().map(|s| s.attempt).unwrap_or(0);
        if attempt > followed {
            if build.spec.builds_natively() {
                followed = attempt;
                let platform = build.spec.platforms.first().cloned().unwrap_or_default();
                note(
                    console.err,
                    &format!(
                        "Build {name} builds each platform in a pod of its own: follow one with `kubectl kiln logs -f {name} -n {namespace} --platform {platform}`; waiting for the Build to end…"
                    ),
                )?;
            } else {
                let pod = attempt_pod(&build, attempt);
                let exists = pods
                    .get_opt(&pod)
                    .await
                    .map_err(|source| PluginError::ReadLog {
                        namespace: namespace.to_owned(),
                        pod: pod.clone(),
                        source: Box::new(source),
                    })?
                    .is_some();
                if exists {
                    followed = attempt;
                    if attempt > 1 {
                        note(console.err, &format!("attempt {attempt}: pod {pod}"))?;
                    }
                    let request = LogRequest {
                        attempt: Some(attempt),
                        follow: true,
                        container: BUILD_CONTAINER.to_owned(),
                        tail: None,
                    };
                    match logs_of(client, namespace, name, &request, None, console.out).await {
                        Ok(()) => {}
                        // The log is a view; the Build's end is what is waited for.
                        Err(
                            e @ (PluginError::PodGone { .. }
                            | PluginError::PodNotCreated { .. }
                            | PluginError::ReadLog { .. }),
                        ) => note(console.err, &error_chain(&e))?,
                        Err(e) => return Err(e),
                    }
                    continue;
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}

/// Whether an outcome is a success for the exit code: no `--follow`, or the Build
/// succeeded.
pub fn succeeded(outcome: &LocalBuildOutcome) -> bool {
    outcome
        .end
        .as_ref()
        .is_none_or(|e| e.phase == Phase::Succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(skip: u64, size: usize, writes: &[&[u8]]) -> Vec<String> {
        let (tx, mut rx) = mpsc::channel(64);
        let mut writer = ChunkWriter::new(tx, skip, size);
        for data in writes {
            writer.write_all(data).unwrap();
        }
        writer.flush().unwrap();
        drop(writer);
        let mut got = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            got.push(String::from_utf8(chunk.to_vec()).unwrap());
        }
        got
    }

    /// What a case is about, the bytes to skip, the chunk size, the writes, the chunks.
    type ChunkCase<'a> = (&'a str, u64, usize, &'a [&'a [u8]], &'a [&'a str]);

    #[test]
    fn the_chunk_writer_skips_what_the_receiver_has_and_cuts_even_chunks() {
        let cases: &[ChunkCase] = &[
            ("whole chunks", 0, 4, &[b"abcdefgh"], &["abcd", "efgh"]),
            (
                "a short last chunk",
                0,
                4,
                &[b"abcdefghij"],
                &["abcd", "efgh", "ij"],
            ),
            (
                "skip within a write",
                3,
                4,
                &[b"abcdefghijk"],
                &["defg", "hijk"],
            ),
            (
                "skip across writes",
                5,
                4,
                &[b"abc", b"defgh", b"ij"],
                &["fghi", "j"],
            ),
            ("skip everything", 20, 4, &[b"abcdefgh"], &[]),
            (
                "small writes",
                0,
                3,
                &[b"a", b"b", b"cd", b"e"],
                &["abc", "de"],
            ),
        ];
        for (case, skip, size, writes, want) in cases {
            assert_eq!(chunks(*skip, *size, writes), *want, "{case}");
        }
    }

    #[test]
    fn the_chunk_writer_fails_once_the_upload_stopped() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut writer = ChunkWriter::new(tx, 0, 2);
        let error = writer.write_all(b"abcd").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_resumed_pack_sends_exactly_the_rest_of_the_tar() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/big.bin"), vec![7u8; 50_000]).unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "*.log\n").unwrap();
        std::fs::write(dir.path().join("debug.log"), "left out").unwrap();
        let ignore = load_dockerignore(dir.path(), "Dockerfile").unwrap();
        let mut whole = Vec::new();
        let report = pack(dir.path(), &ignore, &PackOptions::default(), &mut whole).unwrap();
        for skip in [0u64, 1, 511, 512, 20_000, report.tar_bytes] {
            let (tx, mut rx) = mpsc::channel(1024);
            let resumed = pack(
                dir.path(),
                &ignore,
                &PackOptions::default(),
                ChunkWriter::new(tx, skip, 4096),
            )
            .unwrap();
            assert_eq!(resumed.digest, report.digest, "skip {skip}");
            let mut sent = Vec::new();
            while let Ok(chunk) = rx.try_recv() {
                assert!(chunk.len() <= 4096);
                sent.extend_from_slice(&chunk);
            }
            assert_eq!(sent, whole[skip as usize..], "skip {skip}");
        }
    }

    #[test]
    fn the_context_must_be_a_directory_holding_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(dir.path().join("docker")).unwrap();
        std::fs::write(dir.path().join("docker/Dockerfile"), "FROM scratch\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("Dockerfile"), dir.path().join("Linked"))
            .unwrap();
        let shown = dir.path().display().to_string();
        let open = |dockerfile: &str| {
            LocalContext::open(&LocalBuildArgs {
                dir: dir.path().to_owned(),
                dockerfile: dockerfile.into(),
                ..LocalBuildArgs::default()
            })
            .map(|c| c.dockerfile)
            .map_err(|e| e.to_string().replace(&shown, "DIR"))
        };
        assert_eq!(open("./docker/Dockerfile"), Ok("docker/Dockerfile".into()));
        assert_eq!(
            open("Dockerfile"),
            Err("Dockerfile Dockerfile does not exist in the build context DIR (--dockerfile is a path relative to the context directory)".into())
        );
        assert_eq!(
            open("docker"),
            Err("Dockerfile docker is not a file in the build context DIR (--dockerfile is a path relative to the context directory)".into())
        );
        let linked = open("Linked").unwrap_err();
        assert!(
            linked.starts_with("Dockerfile Linked is a symlink to "),
            "{linked}"
        );
        assert!(linked.contains("outside the context"), "{linked}");
        let missing = LocalContext::open(&LocalBuildArgs {
            dir: dir.path().join("nope"),
            ..LocalBuildArgs::default()
        })
        .unwrap_err()
        .to_string()
        .replace(&shown, "DIR");
        assert_eq!(missing, "build context DIR/nope: does not exist");
    }

    mod flow {
        //! The whole flow against an in-memory API server whose `pods/proxy` reaches an
        //! in-memory receiver that keeps to the protocol, with faults injected; the tests
        //! assert what the receiver ends up holding and what the command says.

        use std::sync::{Arc, Mutex};

        use axum::http::{Response, StatusCode, Uri};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

        use super::super::*;
        use crate::context::protocol::UploadError;
        use crate::crd::condition::{CONDITION_SUCCEEDED, ConditionStatus, set_condition};
        use crate::crd::fixtures::at;
        use crate::crd::{BuildStatus, OutputStatus};

        const BUILDS: &str = "/apis/kiln.dev/v1alpha1/namespaces/team/builds";
        const PODS: &str = "/api/v1/namespaces/team/pods";
        const PROXY: &str = "/api/v1/namespaces/team/pods/app-1:8080/proxy";

        /// The receiver of pod `app-1`.
        struct Receiver {
            state: UploadState,
            bytes: Vec<u8>,
            /// `Checking` answers before `Waiting`.
            checking: u32,
            /// Chunks answered 503 before one is taken.
            unavailable: u32,
            /// At the first chunk past offset 0, forget all but this many bytes and answer
            /// 409.
            forget_to: Option<u64>,
        }

        struct Fake {
            build: Option<Build>,
            existing: Vec<String>,
            /// The phase, reason and message the Build shows while waiting.
            waiting: (Phase, Reason, Option<String>),
            forbidden: bool,
            /// Reads of the Build answered 503 before one is answered.
            busy: u32,
            receiver: Receiver,
        }

        impl Fake {
            fn new() -> Self {
                Self {
                    build: None,
                    existing: Vec::new(),
                    waiting: (Phase::Pending, Reason::PodCreated, None),
                    forbidden: false,
                    busy: 0,
                    receiver: Receiver {
                        state: UploadState::Waiting,
                        bytes: Vec::new(),
                        checking: 0,
                        unavailable: 0,
                        forget_to: None,
                    },
                }
            }

            fn declared(&self) -> (Digest, u64) {
                let local = self
                    .build
                    .as_ref()
                    .and_then(|b| b.spec.source.local.clone())
                    .unwrap();
                (local.digest.parse().unwrap(), local.size as u64)
            }

            fn upload_status(&self) -> UploadStatus {
                let (digest, size) = self.declared();
                UploadStatus {
                    state: self.receiver.state,
                    received: self.receiver.bytes.len() as u64,
                    size,
                    digest,
                    from_cache: false,
                }
            }

            fn refuse(&self, code: u16, message: &str) -> (u16, Vec<u8>) {
                let error = UploadError {
                    message: message.into(),
                    status: Some(self.upload_status()),
                };
                (code, serde_json::to_vec(&error).unwrap())
            }

            fn current_build(&self) -> Build {
                let mut build = self.build.clone().unwrap();
                let (phase, reason, message) = match self.receiver.state {
                    UploadState::Done => (Phase::Succeeded, Reason::Succeeded, None),
                    _ => self.waiting.clone(),
                };
                let mut status = BuildStatus {
                    phase: Some(phase),
                    attempt: 1,
                    message,
                    ..BuildStatus::default()
                };
                set_condition(
                    &mut status.conditions,
                    CONDITION_SUCCEEDED,
                    match phase {
                        Phase::Succeeded => ConditionStatus::True,
                        Phase::Pending | Phase::Running => ConditionStatus::Unknown,
                        _ => ConditionStatus::False,
                    },
                    reason,
                    "",
                    Some(1),
                    at(0),
                );
                if phase == Phase::Succeeded {
                    status.output = Some(OutputStatus {
                        image: build.spec.output.image.clone(),
                        digest: Digest::of(b"image").to_string(),
                        short_digest: Digest::of(b"image").short(),
                        ..OutputStatus::default()
                    });
                    status.completion_time = Some(Time(at(60)));
                }
                build.status = Some(status);
                build
            }

            fn answer(&mut self, method: &Method, uri: &Uri, body: &[u8]) -> (u16, Vec<u8>) {
                let path = uri.path();
                if path == BUILDS && method == Method::POST {
                    let mut build: Build = serde_json::from_slice(body).unwrap();
                    let name = build.metadata.name.clone().unwrap_or_else(|| {
                        format!("{}x7k2p", build.metadata.generate_name.clone().unwrap())
                    });
                    if self.existing.contains(&name) {
                        return kube_status(409, "AlreadyExists", "already exists");
                    }
                    build.metadata.name = Some(name);
                    build.metadata.uid = Some("uid-1".into());
                    self.build = Some(build.clone());
                    return (201, serde_json::to_vec(&build).unwrap());
                }
                if path.starts_with(BUILDS) && method == Method::GET {
                    if self.busy > 0 {
                        self.busy -= 1;
                        return kube_status(503, "ServiceUnavailable", "the server is busy");
                    }
                    return (200, serde_json::to_vec(&self.current_build()).unwrap());
                }
                if path == PODS {
                    assert_eq!(
                        uri.query(),
                        Some(
                            "&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dkiln%2Ckiln.dev%2Fbuild-uid%3Duid-1"
                        )
                    );
                    let list = serde_json::json!({
                        "apiVersion": "v1", "kind": "PodList", "metadata": {},
                        "items": [{
                            "metadata": {"name": "app-1", "namespace": "team"},
                            "status": {
                                "phase": "Pending",
                                "podIP": "10.0.0.1",
                                "initContainerStatuses": [{
                                    "name": "context", "image": "kiln", "imageID": "",
                                    "ready": false, "restartCount": 0,
                                    "state": {"running": {}},
                                }],
                            },
                        }],
                    });
                    return (200, serde_json::to_vec(&list).unwrap());
                }
                let Some(rest) = path.strip_prefix(PROXY) else {
                    return kube_status(404, "NotFound", "not found");
                };
                if self.forbidden {
                    return kube_status(
                        403,
                        "Forbidden",
                        "pods \"app-1\" is forbidden: User \"dev\" cannot get resource \"pods/proxy\" in API group \"\" in the namespace \"team\"",
                    );
                }
                let (_, size) = self.declared();
                match (method.as_str(), rest) {
                    ("GET", STATUS_PATH) => {
                        if self.receiver.checking > 0 {
                            self.receiver.checking -= 1;
                            let mut status = self.upload_status();
                            status.state = UploadState::Checking;
                            return (200, serde_json::to_vec(&status).unwrap());
                        }
                        (200, serde_json::to_vec(&self.upload_status()).unwrap())
                    }
                    ("POST", CHUNK_PATH) => {
                        if self.receiver.unavailable > 0 {
                            self.receiver.unavailable -= 1;
                            return kube_status(
                                503,
                                "ServiceUnavailable",
                                "error trying to reach service: dial tcp 10.0.0.1:8080: connect: connection refused",
                            );
                        }
                        let offset: u64 = uri
                            .query()
                            .and_then(|q| q.strip_prefix("offset="))
                            .unwrap()
                            .parse()
                            .unwrap();
                        if let Some(keep) = self.receiver.forget_to.take_if(|_| offset > 0) {
                            self.receiver.bytes.truncate(keep as usize);
                            return self.refuse(409, "does not continue the upload");
                        }
                        if offset != self.receiver.bytes.len() as u64 {
                            return self.refuse(409, "does not continue the upload");
                        }
                        assert!(offset + body.len() as u64 <= size);
                        assert!(!body.is_empty() && body.len() <= CHUNK_BYTES);
                        self.receiver.bytes.extend_from_slice(body);
                        (200, serde_json::to_vec(&self.upload_status()).unwrap())
                    }
                    ("POST", DONE_PATH) => {
                        let (digest, size) = self.declared();
                        if Digest::of(&self.receiver.bytes) != digest
                            || self.receiver.bytes.len() as u64 != size
                        {
                            self.receiver.bytes.clear();
                            return self.refuse(400, "the tar is not the declared one");
                        }
                        self.receiver.state = UploadState::Done;
                        (200, serde_json::to_vec(&self.upload_status()).unwrap())
                    }
                    _ => self.refuse(404, "no such route"),
                }
            }
        }

        fn kube_status(code: u16, reason: &str, message: &str) -> (u16, Vec<u8>) {
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code,
            });
            (code, serde_json::to_vec(&status).unwrap())
        }

        fn client(fake: &Arc<Mutex<Fake>>) -> Client {
            let fake = fake.clone();
            let service = tower::service_fn(move |request: Request<Body>| {
                let fake = fake.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect_bytes().await?;
                    let (code, json) =
                        fake.lock()
                            .unwrap()
                            .answer(&parts.method, &parts.uri, &body);
                    Ok::<_, kube::Error>(
                        Response::builder()
                            .status(StatusCode::from_u16(code).unwrap())
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Body::from(json))
                            .unwrap(),
                    )
                }
            });
            Client::new(service, "team")
        }

        /// A directory of about 20 MiB: three chunks.
        fn directory() -> tempfile::TempDir {
            let dir = tempfile::Builder::new().prefix("My App").tempdir().unwrap();
            std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
            let big: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
            std::fs::write(dir.path().join("data.bin"), big).unwrap();
            dir
        }

        fn tar_of(dir: &std::path::Path) -> Vec<u8> {
            let ignore = load_dockerignore(dir, "Dockerfile").unwrap();
            let mut tar = Vec::new();
            pack(dir, &ignore, &PackOptions::default(), &mut tar).unwrap();
            tar
        }

        struct Run {
            result: Result<LocalBuildOutcome, PluginError>,
            out: String,
            err: String,
        }

        async fn run(fake: &Arc<Mutex<Fake>>, args: LocalBuildArgs) -> Run {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let args = LocalBuildArgs {
                image: "registry.example.com/team/app:dev".into(),
                poll: Duration::from_millis(5),
                ..args
            };
            let result = {
                let mut console = Console {
                    out: &mut out,
                    err: &mut err,
                    err_is_terminal: false,
                };
                build_local(client(fake), "team", &args, &mut console).await
            };
            Run {
                result,
                out: String::from_utf8(out).unwrap(),
                err: String::from_utf8(err).unwrap(),
            }
        }

        #[tokio::test]
        async fn a_context_is_uploaded_in_chunks_through_transient_failures() {
            let dir = directory();
            let fake = Arc::new(Mutex::new(Fake::new()));
            {
                let mut f = fake.lock().unwrap();
                f.receiver.checking = 2;
                f.receiver.unavailable = 1;
                f.busy = 1;
            }
            let run = run(
                &fake,
                LocalBuildArgs {
                    dir: dir.path().to_owned(),
                    ..LocalBuildArgs::default()
                },
            )
            .await;
            let outcome = run.result.unwrap();
            let tar = tar_of(dir.path());
            let f = fake.lock().unwrap();
            assert_eq!(f.receiver.bytes, tar);
            assert_eq!(f.receiver.state, UploadState::Done);
            assert!(outcome.name.starts_with("my-app"), "{}", outcome.name);
            assert_eq!(outcome.bytes_sent, tar.len() as u64);
            assert_eq!(outcome.size, tar.len() as u64);
            assert_eq!(outcome.digest, Digest::of(&tar));
            assert_eq!(outcome.end, None);
            assert_eq!(
                run.out,
                format!(
                    "build {0} created; follow it with: kubectl kiln logs -f {0} -n team\n",
                    outcome.name
                )
            );
            for line in [
                "reading Build team/my-app",
                "(503 the server is busy); trying again…",
                "pod app-1 is looking for the context in the cache…",
                "sending the context to pod app-1…",
                "(100%)",
                "uploaded 20.0 MiB in",
            ] {
                assert!(run.err.contains(line), "{line:?} in:\n{}", run.err);
            }
            // A line per tenth when not on a terminal, not one per chunk.
            assert!(run.err.matches("uploading ").count() <= 10, "{}", run.err);
        }

        #[tokio::test]
        async fn nothing_is_sent_when_the_cache_has_the_context_and_follow_reports_the_end() {
            let dir = directory();
            let fake = Arc::new(Mutex::new(Fake::new()));
            fake.lock().unwrap().receiver.state = UploadState::Done;
            let run = run(
                &fake,
                LocalBuildArgs {
                    dir: dir.path().to_owned(),
                    name: Some("app".into()),
                    follow: true,
                    ..LocalBuildArgs::default()
                },
            )
            .await;
            let outcome = run.result.unwrap();
            assert_eq!(outcome.name, "app");
            assert_eq!(outcome.bytes_sent, 0);
            assert_eq!(outcome.upload_duration, Duration::ZERO);
            assert!(fake.lock().unwrap().receiver.bytes.is_empty());
            assert!(
                run.err
                    .contains("the context is already in the cache: nothing to send"),
                "{}",
                run.err
            );
            assert_eq!(
                outcome.end.as_ref().map(|e| e.phase),
                Some(Phase::Succeeded)
            );
            assert!(succeeded(&outcome));
            assert_eq!(
                run.out,
                format!(
                    "Build team/app Succeeded (Succeeded)\npushed registry.example.com/team/app:dev@{}\n",
                    Digest::of(b"image")
                )
            );
        }

        #[tokio::test]
        async fn an_upload_resumes_where_the_receiver_stands() {
            let dir = directory();
            let tar = tar_of(dir.path());
            let fake = Arc::new(Mutex::new(Fake::new()));
            // The receiver has the first 3 MiB from an earlier try; at the second chunk it
            // forgets all but 1000 bytes.
            let had = 3 << 20;
            {
                let mut f = fake.lock().unwrap();
                f.receiver.bytes = tar[..had].to_vec();
                f.receiver.forget_to = Some(1000);
            }
            let run = run(
                &fake,
                LocalBuildArgs {
                    dir: dir.path().to_owned(),
                    ..LocalBuildArgs::default()
                },
            )
            .await;
            let outcome = run.result.unwrap();
            assert_eq!(fake.lock().unwrap().receiver.bytes, tar);
            // The first chunk after `had` was refused, then everything after 1000 sent.
            assert_eq!(outcome.bytes_sent, tar.len() as u64 - 1000);
            assert!(
                run.err.contains("(resuming at byte 3145728)")
                    && run.err.contains("(resuming at byte 1000)"),
                "{}",
                run.err
            );
        }

        #[tokio::test]
        async fn failures_say_what_to_do() {
            let dir = directory();
            let args = || LocalBuildArgs {
                dir: dir.path().to_owned(),
                name: Some("app".into()),
                ..LocalBuildArgs::default()
            };
            let exists = Arc::new(Mutex::new(Fake::new()));
            exists.lock().unwrap().existing.push("app".into());
            let ended = Arc::new(Mutex::new(Fake::new()));
            ended.lock().unwrap().waiting = (
                Phase::Failed,
                Reason::InvalidSpec,
                Some("spec.source.local needs the controller's cache service".into()),
            );
            let forbidden = Arc::new(Mutex::new(Fake::new()));
            forbidden.lock().unwrap().forbidden = true;
            let cases = [
                (
                    exists,
                    args(),
                    "Build team/app already exists: delete it (`kubectl delete build app -n team`) or choose another --name".to_owned(),
                ),
                (
                    ended,
                    args(),
                    "Build team/app ended before its context was received: Failed (InvalidSpec): spec.source.local needs the controller's cache service".to_owned(),
                ),
                (
                    forbidden,
                    args(),
                    "the API server refused to get pods/proxy of pod team/app-1 (pods \"app-1\" is forbidden: User \"dev\" cannot get resource \"pods/proxy\" in API group \"\" in the namespace \"team\"): uploading a local build context needs the verbs get and create on the resource pods/proxy in namespace team; config/rbac/local_builder_role.yaml is a role that grants them (docs/build-api.md, \"Local builds\")".to_owned(),
                ),
                (
                    Arc::new(Mutex::new(Fake::new())),
                    LocalBuildArgs {
                        max_size: 1 << 20,
                        ..args()
                    },
                    format!(
                        "the build context {} holds more than --max-size 1.0 MiB of files (at least 20.0 MiB when packing stopped): add what the build does not need to its .dockerignore, or raise --max-size. Largest files: data.bin (20.0 MiB), Dockerfile (22 B)",
                        dir.path().display()
                    ),
                ),
            ];
            for (fake, args, want) in cases {
                let run = run(&fake, args).await;
                let error = run.result.unwrap_err();
                assert_eq!(error_chain(&error), want);
            }
        }
    }
}
