//! The `weir` binary as a user runs it: `dev` on free ports, `send` against it, SIGTERM,
//! and configuration errors that name the field.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

#[test]
fn dev_serves_send_and_stops_on_sigterm() {
    let mut dev = Command::new(WEIR)
        .args([
            "dev",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/pipeline.yaml"),
        ])
        .args([
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
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
    let printed: Vec<String> = lines.by_ref().take(4).map(Result::unwrap).collect();
    assert!(printed.iter().any(|l| l.contains("Kafka")), "{printed:?}");

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
