//! Helpers for end-to-end tests: start and stop the external processes they need.
//!
//! Each helper finds its binary on `PATH` or in `~/.cargo/bin` (where `.ci/test`
//! installs it) and fails with an instruction when it is missing: a test that needs a
//! real broker never passes without one.
//!
//! For fault tests, the broker and the S3 server can be stopped and started again on
//! the same port with the same data, and [`TcpProxy`] cuts and heals a network path.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// The directory holding this build's binaries, checked to contain each of `names`
/// (binaries named like their packages). A test runs from target/<profile>/deps/, and
/// `cargo test --workspace` builds the workspace's binaries into target/<profile>/ for
/// their packages' own tests; `cargo test -p weir-tests` alone does not, so a missing
/// binary fails with the command that builds it.
pub fn build_binaries(names: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps/")
        .to_path_buf();
    let packages: Vec<String> = names.iter().map(|n| format!("-p {n}")).collect();
    for name in names {
        let binary = dir.join(name);
        assert!(
            binary.is_file(),
            "{} is missing: `cargo build {}` (or `cargo test --workspace`) builds it",
            binary.display(),
            packages.join(" ")
        );
    }
    dir
}

/// A child process, killed (SIGKILL) and reaped on drop. Its output goes to a log file
/// when it has one, so a failure message can quote the end of it.
pub struct Process {
    child: Child,
    what: String,
    log: Option<PathBuf>,
}

impl Process {
    /// Starts `command`, with stdout and stderr appended to `log` (or discarded).
    pub fn spawn(mut command: Command, what: &str, log: Option<&Path>) -> anyhow::Result<Self> {
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Self {
            child,
            what: what.into(),
            log: log.map(Path::to_path_buf),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (through `kill(1)`: the workspace has no libc binding) and
    /// returns at once; [`Process::wait_exit`] waits for the exit.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -TERM {} failed", self.what);
    }

    /// Sends SIGKILL and reaps the process: when this returns it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting on a child")
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return format!("({} has no log)", self.what);
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("last lines of {} ({}):\n{tail}", self.what, path.display())
    }

    /// Waits until the process listens on `port`, failing if it exits first.
    pub fn wait_for_port(&mut self, port: u16, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                bail!("{} exited early with {status}", self.what);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} did not listen on port {port} within {within:?}",
            self.what
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a server that listens on a fixed `port`, retrying for a while when it exits
/// at once: a port just given up by a killed process can still be taken for a moment.
fn start_listening(
    port: u16,
    what: &str,
    log: Option<&Path>,
    command: impl Fn() -> Command,
) -> anyhow::Result<Process> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut process = Process::spawn(command(), what, log)?;
        let left = deadline.saturating_duration_since(Instant::now());
        match process.wait_for_port(port, left) {
            Ok(()) => return Ok(process),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// How a [`Broker`] is started.
#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    /// Keep the log in a SQLite file in the broker's directory, so that what it
    /// acknowledged survives [`Broker::stop`] and [`Broker::restart`]; in memory
    /// otherwise.
    pub persistent: bool,
    /// The `host:port` the broker advertises to clients (a proxy in front of it)
    /// instead of its own address.
    pub advertised: Option<String>,
}

/// A real Kafka-compatible broker process (tansu). It does not create topics on use.
pub struct Broker {
    /// The address clients bootstrap from: the advertised one.
    pub bootstrap: String,
    /// The port the broker itself listens on (a proxy's upstream).
    pub port: u16,
    options: BrokerOptions,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl Broker {
    /// Starts a broker with in-memory storage on a free port and waits until it
    /// listens.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(BrokerOptions::default())
    }

    /// Starts a broker on a free port as `options` say and waits until it listens.
    pub fn start_with(options: BrokerOptions) -> anyhow::Result<Self> {
        let port = free_port();
        let mut broker = Self {
            bootstrap: options
                .advertised
                .clone()
                .unwrap_or_else(|| format!("127.0.0.1:{port}")),
            port,
            options,
            dir: tempfile::tempdir()?,
            process: None,
        };
        broker.restart()?;
        Ok(broker)
    }

    /// Kills the broker (SIGKILL, as in a crash) and returns once it is gone.
    /// Persistent storage keeps what was committed.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the broker again on the same port with the same storage (a running one
    /// is stopped first), and waits until it listens.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let binary = find_tool("tansu")?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.bootstrap);
        // A relative SQLite path: tansu resolves `sqlite://` URLs against its working
        // directory (an absolute path is prefixed with it again).
        let storage = if self.options.persistent {
            "sqlite://tansu.db"
        } else {
            "memory://tansu/"
        };
        let dir = self.dir.path().to_path_buf();
        let log = dir.join("tansu.log");
        let process = start_listening(self.port, "tansu", Some(&log), || {
            let mut command = Command::new(&binary);
            command
                .args(["broker", "--listener-url", &url])
                .args(["--advertised-listener-url", &advertised])
                .args(["--storage-engine", storage])
                .current_dir(&dir);
            command
        })?;
        self.process = Some(process);
        Ok(())
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
    port: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl S3Server {
    /// Starts s3s-fs on a free port with a bucket named `bucket`.
    pub fn start(bucket: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = tempfile::tempdir()?;
        // s3s-fs keeps each bucket as a directory of its data directory.
        std::fs::create_dir(dir.path().join("data"))?;
        std::fs::create_dir(dir.path().join("data").join(bucket))?;
        let mut server = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.into(),
            access_key: "weir-test-access".into(),
            secret_key: "weir-test-secret".into(),
            port,
            dir,
            process: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// Storage on this server under the prefix `events`, path-style, with the access
    /// key and `secret` in files written to `dir` (as a mounted Secret would be).
    pub fn storage_spec(&self, dir: &Path, secret: &str) -> weir_crds::sink::StorageSpec {
        let key_file = dir.join("access-key");
        let secret_file = dir.join("secret-key");
        std::fs::write(&key_file, &self.access_key).expect("write the access key file");
        std::fs::write(&secret_file, secret).expect("write the secret key file");
        weir_crds::sink::StorageSpec {
            url: format!("s3://{}/events", self.bucket),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            path_style: true,
            access_key_id_file: Some(key_file.display().to_string()),
            secret_access_key_file: Some(secret_file.display().to_string()),
            ..Default::default()
        }
    }

    /// The bucket's directory: each object is a file under it, named by its key,
    /// that appears whole (s3s-fs writes a temporary file and renames it).
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join("data").join(&self.bucket)
    }

    /// Kills the server (SIGKILL) and returns once it is gone; the data stays.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same port with the same data (a running one is
    /// stopped first), and waits until it listens.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let binary = find_tool("s3s-fs")?;
        let port = self.port.to_string();
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("s3s-fs.log");
        let process = start_listening(self.port, "s3s-fs", Some(&log), || {
            let mut command = Command::new(&binary);
            command
                .args(["--host", "127.0.0.1", "--port", &port])
                .args(["--access-key", &self.access_key])
                .args(["--secret-key", &self.secret_key])
                .arg(&data);
            command
        })?;
        self.process = Some(process);
        Ok(())
    }
}

/// A TCP proxy on a loopback port that can cut the network to its upstream without
/// closing anything, as a partition or a dead switch does.
///
/// While healed it forwards each connection to the upstream. [`TcpProxy::cut`] turns
/// every connection into a black hole: open connections stay open but bytes in either
/// direction are read and dropped (no RST, no FIN), and new connections are accepted but
/// never connected upstream. [`TcpProxy::heal`] closes the black-holed connections and
/// forwards new connections again. Dropping the proxy closes everything.
pub struct TcpProxy {
    /// `127.0.0.1:<port>`, where clients connect.
    pub addr: String,
    state: Arc<ProxyState>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct ProxyState {
    cut: AtomicBool,
    stopped: AtomicBool,
    links: Mutex<Vec<Link>>,
}

/// One client connection: its sockets (client side, and upstream when forwarded) and
/// whether its bytes are dropped.
struct Link {
    sockets: Vec<TcpStream>,
    black_hole: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl Link {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for socket in &self.sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl TcpProxy {
    /// Listens on `port` and forwards to `upstream` (`host:port`).
    pub fn start(port: u16, upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("the proxy cannot listen on port {port}"))?;
        // Polled, so that dropping the proxy ends the accepting thread.
        listener.set_nonblocking(true)?;
        let state = Arc::new(ProxyState::default());
        let upstream = upstream.to_string();
        let accepting = state.clone();
        let acceptor = std::thread::spawn(move || accept_loop(&listener, &upstream, &accepting));
        Ok(Self {
            addr: format!("127.0.0.1:{port}"),
            state,
            acceptor: Some(acceptor),
        })
    }

    /// Black-holes every open and new connection.
    pub fn cut(&self) {
        let links = self.state.links.lock().expect("proxy lock");
        self.state.cut.store(true, Ordering::Release);
        for link in links.iter() {
            link.black_hole.store(true, Ordering::Release);
        }
    }

    /// Closes the black-holed connections and forwards new ones again.
    pub fn heal(&self) {
        let mut links = self.state.links.lock().expect("proxy lock");
        self.state.cut.store(false, Ordering::Release);
        links.retain(|link| {
            if link.black_hole.load(Ordering::Acquire) {
                link.close();
                false
            } else {
                true
            }
        });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::Release);
        for link in self.state.links.lock().expect("proxy lock").drain(..) {
            link.close();
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: &str, state: &ProxyState) {
    while !state.stopped.load(Ordering::Acquire) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let mut links = state.links.lock().expect("proxy lock");
        links.retain(|link| !link.closed.load(Ordering::Acquire));
        let black_hole = Arc::new(AtomicBool::new(state.cut.load(Ordering::Acquire)));
        let closed = Arc::new(AtomicBool::new(false));
        let server = if black_hole.load(Ordering::Acquire) {
            None
        } else {
            TcpStream::connect(upstream).ok()
        };
        let mut sockets = vec![client.try_clone().expect("clone a socket")];
        match server {
            Some(server) => {
                let _ = server.set_nodelay(true);
                sockets.push(server.try_clone().expect("clone a socket"));
                let link = Link {
                    sockets,
                    black_hole: black_hole.clone(),
                    closed: closed.clone(),
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (Ok(server), Ok(client)),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        link.close();
                        break;
                    };
                    let (black_hole, closed) = (black_hole.clone(), closed.clone());
                    std::thread::spawn(move || pump(from, Some(to), &black_hole, &closed));
                }
                links.push(link);
            }
            None if black_hole.load(Ordering::Acquire) => {
                // Accepted during a cut: read and dropped until healed.
                links.push(Link {
                    sockets,
                    black_hole: black_hole.clone(),
                    closed: closed.clone(),
                });
                std::thread::spawn(move || pump(client, None, &black_hole, &closed));
            }
            // The upstream refused: the client sees its connection closed, as it would
            // without the proxy.
            None => {
                let _ = client.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies `from` to `to` until either end closes; while `black_hole` is set the bytes
/// are read and dropped.
fn pump(
    mut from: TcpStream,
    mut to: Option<TcpStream>,
    black_hole: &AtomicBool,
    closed: &AtomicBool,
) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if black_hole.load(Ordering::Acquire) {
            continue;
        }
        if let Some(to) = to.as_mut()
            && to.write_all(&buffer[..n]).is_err()
        {
            break;
        }
    }
    // One direction ended: end the other too, unless the connection is a black hole,
    // which stays open until healed.
    if !black_hole.load(Ordering::Acquire) {
        closed.store(true, Ordering::Release);
        let _ = from.shutdown(Shutdown::Both);
        if let Some(to) = to {
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}
