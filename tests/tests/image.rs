//! The container images: `images/build` makes OCI archives of weir and weir-operator
//! from the binaries this test build already has, and `images/smoke` unpacks each one,
//! checks its config (user 65532, entrypoint) and runs its entrypoint in a chroot as
//! user 65532.
//!
//! Needs podman (`apt-get install podman`; `.ci/test` does not install it), python3 and
//! root (for chroot), and a COPY-only `podman build` must work. Without them the test
//! says SKIPPED and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use weir_tests::{build_binaries, find_tool};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Why images cannot be built and checked on this machine, if they cannot.
fn unavailable() -> Option<String> {
    let Ok(podman) = find_tool("podman") else {
        return Some("podman is not installed (apt-get install podman)".into());
    };
    match Command::new(&podman).arg("info").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => return Some(format!("`podman info` fails: {}", text(&output).trim())),
        Err(e) => return Some(format!("podman does not start: {e}")),
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        return Some("the smoke test runs the images in a chroot, which needs root".into());
    }
    if find_tool("python3").is_err() {
        return Some("python3 (which runs images/smoke) is not installed".into());
    }
    // A build of the kind images/build makes (COPY only, no RUN) works here.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Containerfile"),
        "FROM scratch\nCOPY probe /probe\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("probe"), "probe\n").unwrap();
    let probe = format!("localhost/weir-probe:{}", std::process::id());
    let build = Command::new(&podman)
        .args(["build", "--quiet", "-t"])
        .arg(&probe)
        .arg(dir.path())
        .output();
    let _ = Command::new(&podman).arg("rmi").arg(&probe).output();
    match build {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!(
            "`podman build` of a COPY-only Containerfile fails: {}",
            text(&output).trim()
        )),
        Err(e) => Some(format!("podman does not start: {e}")),
    }
}

/// The directory of this build's weir and weir-operator binaries (see
/// [`weir_tests::build_binaries`]).
fn binaries() -> PathBuf {
    build_binaries(&["weir", "weir-operator"])
}

/// Removes the images a test tagged, when it ends.
struct Tagged {
    podman: PathBuf,
    tag: String,
}

impl Drop for Tagged {
    fn drop(&mut self) {
        let _ = Command::new(&self.podman)
            .arg("rmi")
            .arg(format!("ghcr.io/weir-dev/weir:{}", self.tag))
            .arg(format!("ghcr.io/weir-dev/weir-operator:{}", self.tag))
            .arg(format!("localhost/weir-base:{}", self.tag))
            .output();
    }
}

#[test]
fn images_build_and_their_entrypoints_run_as_user_65532() {
    if let Some(reason) = unavailable() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    // A tag of its own, so the test never replaces an image someone built for release.
    let tag = format!("test-{}", std::process::id());
    let _tagged = Tagged {
        podman: find_tool("podman").unwrap(),
        tag: tag.clone(),
    };
    let build = Command::new(root().join("images/build"))
        .current_dir(root())
        .env("WEIR_IMAGE_BINARIES", binaries())
        .env("WEIR_IMAGE_OUT", out.path())
        .env("WEIR_IMAGE_TAG", &tag)
        .output()
        .expect("images/build starts");
    assert!(
        build.status.success(),
        "images/build failed:\n{}",
        text(&build)
    );

    let archives = ["weir", "weir-operator"].map(|name| out.path().join(format!("{name}.oci.tar")));
    let smoke = Command::new(find_tool("python3").unwrap())
        .arg(root().join("images/smoke"))
        .args(archives)
        .current_dir(root())
        .output()
        .expect("images/smoke starts");
    let report = text(&smoke);
    assert!(smoke.status.success(), "images/smoke failed:\n{report}");
    eprintln!("{report}");
    for expected in [
        format!("ghcr.io/weir-dev/weir:{tag}: archive"),
        format!("ghcr.io/weir-dev/weir-operator:{tag}: archive"),
        "weir --version: ok, weir ".to_string(),
        "weir-operator --version: ok, weir-operator ".to_string(),
        "weir-operator crds: ok".to_string(),
        "smoke: ok".to_string(),
    ] {
        assert!(report.contains(&expected), "no {expected:?} in:\n{report}");
    }
}
