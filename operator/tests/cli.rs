//! `weir-operator render` and `weir-operator crds`, as a user runs them.

use std::process::Command;

fn operator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir-operator"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap()
}

#[test]
fn render_prints_every_object_for_review() {
    let output = operator(&[
        "render",
        "-f",
        "examples/pipeline.yaml",
        "-f",
        "examples/sink.yaml",
        "--namespace",
        "analytics",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ConfigMap",
            "Deployment",
            "Service"
        ]
    );
    assert!(text.contains("namespace: analytics"));
    // Offline there is no uid to point at, so no owner references.
    assert!(!text.contains("ownerReferences"));
}

#[test]
fn render_names_what_is_missing_or_wrong() {
    let output = operator(&["render", "-f", "examples/sink.yaml"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("SinkBinding clickstream-parquet names IngestPipeline clickstream"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let pipeline = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pipeline.yaml"
    ))
    .unwrap();
    std::fs::write(&bad, pipeline.replace("acks: sync", "acks: sometimes")).unwrap();
    let output = operator(&["render", "-f", bad.to_str().unwrap()]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("bad.yaml: document 1"), "{error}");
    assert!(error.contains("sometimes"), "{error}");
}

#[test]
fn crds_prints_the_generated_definitions() {
    let output = operator(&["crds"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let committed = [
        "ingestpipelines.weir.dev.yaml",
        "sinkbindings.weir.dev.yaml",
    ]
    .map(|f| {
        std::fs::read_to_string(format!(
            "{}/../crds/generated/{f}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    })
    .join("---\n");
    assert_eq!(text, committed);
}

#[test]
fn render_refuses_what_the_api_server_would_naming_the_field() {
    let pipeline = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pipeline.yaml"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            pipeline
                .replace(
                    "      minReplicas: 2\n      maxReplicas: 10\n      targetCpuUtilization: 70\n",
                    "",
                )
                .replace("    autoscaling:\n", "    replicas: -3\n"),
            "replicas cannot be negative",
        ),
        (
            pipeline.replace("minReplicas: 2", "minReplicas: 20"),
            "minReplicas must not exceed maxReplicas",
        ),
        (
            pipeline.replace("type: ClusterIP", "type: Foo"),
            "type must be ClusterIP, NodePort or LoadBalancer",
        ),
        (
            pipeline.replace("weir.dev/v1alpha1", "weir.dev/v9"),
            "apiVersion \"weir.dev/v9\": IngestPipeline is served as weir.dev/v1alpha1",
        ),
        (
            pipeline.replace("  name: clickstream\n", "  labels: {}\n"),
            "IngestPipeline has no metadata.name",
        ),
        (
            pipeline.replace("kind: IngestPipeline", "kind: IngestPipline"),
            "kind \"IngestPipline\" is not served by weir.dev",
        ),
        (
            pipeline.replace("minReplicas: 2", "minReplicas: three"),
            "spec.workload.autoscaling.minReplicas: invalid type: string \"three\"",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n".to_string(),
            "no IngestPipeline or SinkBinding in",
        ),
    ];
    for (i, (manifest, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case-{i}.yaml"));
        std::fs::write(&path, manifest).unwrap();
        let output = operator(&["render", "-f", path.to_str().unwrap()]);
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "case {i} ({expected}) was accepted"
        );
        assert!(output.stdout.is_empty(), "case {i} printed objects");
        assert!(error.contains(expected), "case {i}: {error}");
    }
}
