//! Debian's `docker-registry` (CNCF distribution 2.8) as a test fixture: started on a free
//! loopback port with its own config and data directory, stopped on drop.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long the registry may take to answer `/v2/` after starting.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `docker-registry`. Dropping it kills and reaps the process; the temp directory
/// (config, data, log) goes with it.
pub struct DockerRegistry {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// `htpasswd` file contents (bcrypt entries), when the registry requires Basic auth.
    htpasswd: Option<String>,
}

impl DockerRegistry {
    /// Starts a registry with an empty store (deletes enabled, access log on).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a registry that requires HTTP Basic credentials from `htpasswd` (lines of
    /// `user:<bcrypt hash>`, the only hash docker-registry accepts).
    pub fn start_with_htpasswd(htpasswd: &str) -> Self {
        Self::start_with(Some(htpasswd.to_owned()))
    }

    fn start_with(htpasswd: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for docker-registry");
        let mut registry = Self {
            child: None,
            port: 0,
            dir,
            htpasswd,
        };
        registry.start_on_a_free_port();
        registry
    }

    /// `127.0.0.1:<port>`, for image references (`docker://<host>/repo:tag`).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The process id, while it runs (for measuring its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the registry (the store stays, for [`DockerRegistry::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait()
            .unwrap_or_else(|err| panic!("docker-registry did not restart: {err}\n{}", self.log()));
    }

    /// Everything the registry logged, access log included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// How many requests with `method` whose path contains `path` the registry has answered,
    /// from its access log (`"GET /v2/a/blobs/sha256:… HTTP/1.1" 200`). Lines are written
    /// when a response completes.
    pub fn count_requests(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} ");
        self.log()
            .lines()
            .filter_map(|line| line.split_once(&needle).map(|(_, rest)| rest))
            .filter(|rest| rest.split(' ').next().is_some_and(|p| p.contains(path)))
            .count()
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn start_on_a_free_port(&mut self) {
        let mut last_error = String::new();
        // Another process can take the port between our probe and the registry's bind.
        for _ in 0..5 {
            self.port = super::free_port();
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(err) => last_error = err,
            }
        }
        panic!(
            "docker-registry did not start: {last_error}\n{}",
            self.log()
        );
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let binary = super::tool("KILN_DOCKER_REGISTRY", "/usr/bin/docker-registry");
        let data = self.dir.path().join("data");
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{}\n  secret: kiln-test-secret\n",
            data.display(),
            self.port
        );
        if let Some(htpasswd) = &self.htpasswd {
            let path = self.dir.path().join("htpasswd");
            std::fs::write(&path, htpasswd).map_err(|e| e.to_string())?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                path.display()
            ));
        }
        std::fs::write(self.config_path(), config).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("exited with {status}"));
            }
            if self.answers_v2() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        Err(format!("no answer on /v2/ within {START_TIMEOUT:?}"))
    }

    fn answers_v2(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host());
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        // A registry with auth answers, but with its challenge.
        let ready: &[u8] = if self.htpasswd.is_some() {
            b"401"
        } else {
            b"200"
        };
        stream.read_exact(&mut head).is_ok() && head.ends_with(ready)
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
