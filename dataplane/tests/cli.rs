//! The `weir` binary as a user runs it: `dev` on free ports, `send` against it, the
//! Parquet files its sink writes, SIGTERM, and configuration errors that name the field.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

#[test]
fn dev_serves_send_writes_parquet_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let (mut dev, http) = start_dev(data.path());
    send_two_clicks(&http);

    let bad = Command::new(WEIR)
        .args([
            "send",
            "--url",
            &format!("http://{http}"),
            "--json",
            "{not json",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--json #1 is not JSON"));

    // The dev sink flushes every 10 s: the two events land as Parquet.
    let parquet = wait_for_parquet(data.path(), |_| true);
    let name = parquet.display().to_string();
    assert!(name.contains("event_type=ad_click/dt="), "{name}");
    assert_eq!(&std::fs::read(&parquet).unwrap()[..4], b"PAR1");
    stop_with_sigterm(&mut dev);

    // Started again in the same directory, the embedded Kafka starts from offset 0:
    // the new run's events are written beside the old ones as generation 1, not
    // skipped as already written.
    let (mut dev, http) = start_dev(data.path());
    send_two_clicks(&http);
    let second = wait_for_parquet(data.path(), |name| name.contains("+g1+"));
    assert!(
        second
            .display()
            .to_string()
            .contains("event_type=ad_click/dt=")
    );
    stop_with_sigterm(&mut dev);
    let report = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let storage = weir::sink::upload::Storage::open(&weir_crds::sink::StorageSpec {
            url: data.path().display().to_string(),
            ..Default::default()
        })
        .unwrap();
        weir::sink::audit::audit(&storage).await.unwrap()
    });
    assert!(report.exactly_once(), "{report:#?}");
    assert_eq!(report.total(), 4, "{report:#?}");
}

/// Starts `weir dev` on free ports writing to `data`; returns it and its HTTP address.
fn start_dev(data: &std::path::Path) -> (std::process::Child, String) {
    let (dev, http, _) = start_dev_with(data, &[], true);
    (dev, http)
}

/// What a process wrote to stderr so far, line by line.
type Logged = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// [`start_dev`] with extra environment variables, on the example pipeline or on
/// `weir dev`'s own default (no topics until the first event); also returns its stderr
/// lines (at `WEIR_LOG=warn`: its warnings and errors), echoed to the test's stderr.
fn start_dev_with(
    data: &std::path::Path,
    env: &[(&str, &str)],
    example: bool,
) -> (std::process::Child, String, Logged) {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/pipeline.yaml");
    let mut dev = Command::new(WEIR)
        .arg("dev")
        .args(example.then_some(["-f", config]).into_iter().flatten())
        .args([
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--sink-metrics",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .env("WEIR_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logged = Logged::default();
    let stderr = BufReader::new(dev.stderr.take().unwrap());
    let sink = logged.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("{line}");
            sink.lock().unwrap().push(line);
        }
    });
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let http = loop {
        let line = lines
            .next()
            .expect("weir dev prints its addresses")
            .unwrap();
        if let Some(rest) = line.trim().strip_prefix("HTTP      POST http://") {
            break rest.trim_end_matches("/api/v1/events").to_string();
        }
    };
    let printed: Vec<String> = lines.by_ref().take(5).map(Result::unwrap).collect();
    assert!(printed.iter().any(|l| l.contains("Kafka")), "{printed:?}");
    assert!(printed.iter().any(|l| l.contains("files")), "{printed:?}");
    // Keep reading, so what weir dev prints at exit has somewhere to go.
    std::thread::spawn(move || lines.for_each(drop));
    (dev, http, logged)
}

fn send_two_clicks(http: &str) {
    let send = Command::new(WEIR)
        .args([
            "send",
            "--url",
            &format!("http://{http}"),
            "--type",
            "ad_click",
        ])
        .args([
            "--json",
            r#"{"ad":1}"#,
            "--json",
            r#"{"ad":2}"#,
            "--id",
            "u1",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&send.stdout);
    assert!(
        send.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(out.contains("CODE_OK"), "{out}");
}

/// Waits up to 30 s for a Parquet file whose path passes `wanted`.
fn wait_for_parquet(dir: &std::path::Path, wanted: impl Fn(&str) -> bool) -> std::path::PathBuf {
    (0..300)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            find_parquet(dir, &wanted)
        })
        .expect("weir dev's sink writes a Parquet file within 30 s")
}

fn stop_with_sigterm(dev: &mut std::process::Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for _ in 0..100 {
        if let Some(status) = dev.try_wait().unwrap() {
            assert!(
                status.success(),
                "weir dev exits cleanly on SIGTERM: {status}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = dev.kill();
    panic!("weir dev did not exit after SIGTERM");
}

fn find_parquet(
    dir: &std::path::Path,
    wanted: &dyn Fn(&str) -> bool,
) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_parquet(&path, wanted) {
                return Some(found);
            }
        } else if path.extension().is_some_and(|e| e == "parquet")
            && wanted(&path.display().to_string())
        {
            return Some(path);
        }
    }
    None
}

#[test]
fn bad_configuration_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "limits:\n  maxBatchBytez: 10\n").unwrap();
    let run = Command::new(WEIR)
        .args(["gateway", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("limits.maxBatchBytez"), "{err}");

    let run = Command::new(WEIR)
        .args(["gateway", "--print-config"])
        .env("WEIR__ACKS", "async")
        .output()
        .unwrap();
    assert!(run.status.success());
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(printed.contains("acks: async"), "{printed}");
    assert!(
        printed.contains("defaultPattern: clickstream-%s-log"),
        "{printed}"
    );
}

#[test]
fn sink_configuration_errors_name_the_field_and_print_config_shows_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.yaml");
    std::fs::write(&path, "flush:\n  maxAge: soon\n").unwrap();
    let run = Command::new(WEIR)
        .args(["sink", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("flush.maxAge"), "{err}");

    let run = Command::new(WEIR)
        .args(["sink", "--print-config"])
        .env("WEIR__STORAGE__URL", "s3://bucket/prefix")
        .output()
        .unwrap();
    assert!(run.status.success());
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(printed.contains("url: s3://bucket/prefix"), "{printed}");
    assert!(printed.contains("groupId: weir-sink"), "{printed}");
}

#[test]
fn logs_carry_no_colour_codes_when_not_on_a_terminal() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = Command::new(WEIR)
        .args(["dev", "--no-sink"])
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .args(["--metrics", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = dev.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let listening = loop {
        let line = received
            .recv_timeout(Duration::from_secs(60))
            .expect("weir dev logs that the gateway listens");
        if line.contains("gateway listening") {
            break line;
        }
    };
    let _ = dev.kill();
    let _ = dev.wait();
    assert!(!listening.contains('\u{1b}'), "{listening:?}");
    assert!(listening.contains("INFO"), "{listening:?}");
}

/// A stand-in OTLP collector: the names of the spans it received.
mod collector {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };

    #[derive(Clone, Default)]
    pub struct Spans(pub Arc<Mutex<Vec<String>>>);

    #[tonic::async_trait]
    impl TraceService for Spans {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut names = self.0.lock().unwrap();
            for resource in request.into_inner().resource_spans {
                for scope in resource.scope_spans {
                    names.extend(scope.spans.into_iter().map(|s| s.name));
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Serves on a free port until the runtime stops; returns its address.
    pub async fn start(spans: Spans) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(spans))
                .serve_with_incoming(incoming),
        );
        addr
    }
}

/// With an OTLP endpoint set, a batch's spans (batch, route, publish, ack) and the
/// sink's (flush, encode, upload, commit) reach the collector; by default nothing is
/// exported (no endpoint, no exporter).
#[test]
fn traces_follow_a_batch_and_a_flush_over_otlp() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let spans = collector::Spans::default();
    let addr = runtime.block_on(collector::start(spans.clone()));
    let data = tempfile::tempdir().unwrap();
    let (mut dev, http, _) = start_dev_with(
        data.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{addr}"))],
        true,
    );
    send_two_clicks(&http);
    wait_for_parquet(data.path(), |_| true);
    stop_with_sigterm(&mut dev);
    let names = spans.0.lock().unwrap().clone();
    for wanted in [
        "batch", "route", "publish", "ack", "flush", "encode", "upload", "commit",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "no {wanted} span in {names:?}"
        );
    }
}

/// A normal run logs no warning or error: start (on the default configuration the
/// sink subscribes before any topic exists), events, a flush, and a clean stop.
#[test]
fn a_normal_dev_run_logs_no_warnings_or_errors() {
    let data = tempfile::tempdir().unwrap();
    let (mut dev, http, logged) = start_dev_with(data.path(), &[], false);
    send_two_clicks(&http);
    wait_for_parquet(data.path(), |_| true);
    stop_with_sigterm(&mut dev);
    // The reader thread ends with the process; give it a moment to drain.
    std::thread::sleep(Duration::from_millis(200));
    let lines = logged.lock().unwrap().clone();
    assert!(
        lines.is_empty(),
        "WEIR_LOG=warn printed during a normal run:\n{}",
        lines.join("\n")
    );
}

/// `weir loadgen` in the shape of a mobile fleet: paced, connections ramped in, a
/// reconnect storm midway; it reports the whole run and the steady part apart.
#[test]
fn loadgen_ramps_storms_and_reports_the_steady_tail() {
    let data = tempfile::tempdir().unwrap();
    let (mut dev, http) = start_dev(data.path());
    let output = Command::new(WEIR)
        .args(["loadgen", "--url", &format!("ws://{http}/api/v1/events")])
        .args(["--metrics-url", "http://127.0.0.1:1/metrics"])
        .args([
            "--connections",
            "40",
            "--batch-size",
            "20",
            "--rate",
            "4000",
        ])
        .args(["--ramp", "500ms", "--warmup", "1s", "--storm-at", "1500ms"])
        .args(["--duration", "3s"])
        .output()
        .unwrap();
    stop_with_sigterm(&mut dev);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("connection_errors=0"), "{report}");
    assert!(report.contains("failed_events=0"), "{report}");
    assert!(report.contains("ack_latency_ms p50="), "{report}");
    assert!(report.contains("ack_latency_ms_after_1s p50="), "{report}");
}
