//! Helpers for end-to-end tests: start and stop the external processes they need.
//!
//! Each helper finds its binary on `PATH` or in `~/.cargo/bin` (where `.ci/test`
//! installs it) and fails with an instruction when it is missing: a test that needs a
//! real broker never passes without one.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free loopback port (the OS picks it; a tiny window remains before use).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Finds an installed tool.
pub fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    let in_cargo = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name));
    on_path
        .or(in_cargo.filter(|p| p.is_file()))
        .with_context(|| {
            format!("{name} is not installed: run `.ci/test`, which installs what the tests need")
        })
}

/// A child process killed on drop.
pub struct Process {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on port {port} within 30 s")
}

/// A real Kafka-compatible broker process (tansu, in-memory storage).
pub struct Broker {
    /// The bootstrap address.
    pub bootstrap: String,
    _process: Process,
}

impl Broker {
    /// Starts a broker on a free port and waits until it listens.
    pub fn start() -> anyhow::Result<Self> {
        let binary = find_tool("tansu")?;
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start tansu")?;
        wait_for_port(port, &mut child, "tansu")?;
        Ok(Self {
            bootstrap: format!("127.0.0.1:{port}"),
            _process: Process { child, _dir: dir },
        })
    }
}

/// A real S3-compatible server process (s3s-fs) with one bucket.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The bucket that exists.
    pub bucket: String,
    /// The access key it accepts.
    pub access_key: String,
    /// The secret key it accepts.
    pub secret_key: String,
    _process: Process,
}

impl S3Server {
    /// Starts s3s-fs on a free port with a bucket named `bucket`.
    pub fn start(bucket: &str) -> anyhow::Result<Self> {
        let binary = find_tool("s3s-fs")?;
        let port = free_port();
        let dir = tempfile::tempdir()?;
        // s3s-fs keeps each bucket as a directory of its data directory.
        std::fs::create_dir(dir.path().join(bucket))?;
        let (access_key, secret_key) = ("weir-test-access", "weir-test-secret");
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start s3s-fs")?;
        wait_for_port(port, &mut child, "s3s-fs")?;
        Ok(Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            _process: Process { child, _dir: dir },
        })
    }
}
