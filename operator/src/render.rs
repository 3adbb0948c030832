//! `weir-operator render`: the objects the operator would apply for some manifests,
//! computed offline by the same builders, for review in GitOps pull requests.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use weir_crds::resources::{IngestPipeline, SinkBinding};
use weir_crds::rules::Kind;

use crate::build::{self, Child, Defaults};

/// Why manifests cannot be rendered. Each names the file or resource.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {index}: {message}")]
    Parse {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error("{kind} {name}: {source}")]
    Invalid {
        kind: &'static str,
        name: String,
        source: build::InvalidSpec,
    },
    #[error(
        "SinkBinding {binding} names IngestPipeline {pipeline} in spec.pipelineRef, which is \
         not in the given files: pass it with another -f"
    )]
    MissingPipeline { binding: String, pipeline: String },
    #[error("no IngestPipeline or SinkBinding in {files}")]
    NoResources { files: String },
}

/// The custom resources found in some manifests.
#[derive(Default)]
pub struct Manifests {
    pub pipelines: Vec<IngestPipeline>,
    pub bindings: Vec<SinkBinding>,
}

impl Manifests {
    /// Reads every YAML document of every file; documents of other kinds are skipped.
    /// Resources without a namespace get `namespace`.
    pub fn read(paths: &[impl AsRef<Path>], namespace: &str) -> Result<Self, RenderError> {
        let mut manifests = Self::default();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|source| RenderError::Read {
                path: path.into(),
                source,
            })?;
            weir_crds::yaml::check_nesting(&text).map_err(|message| RenderError::Parse {
                path: path.into(),
                index: 1,
                message,
            })?;
            for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let parse = |message: String| RenderError::Parse {
                    path: path.into(),
                    index: index + 1,
                    message,
                };
                let value =
                    serde_yaml::Value::deserialize(document).map_err(|e| parse(e.to_string()))?;
                let kind = admit(&value).map_err(parse)?;
                match kind {
                    Some(Kind::IngestPipeline) => {
                        let mut pipeline: IngestPipeline = typed(&value).map_err(parse)?;
                        check_rules(Kind::IngestPipeline, &value).map_err(parse)?;
                        pipeline.metadata.namespace.get_or_insert(namespace.into());
                        manifests.pipelines.push(pipeline);
                    }
                    Some(Kind::SinkBinding) => {
                        let mut binding: SinkBinding = typed(&value).map_err(parse)?;
                        check_rules(Kind::SinkBinding, &value).map_err(parse)?;
                        binding.metadata.namespace.get_or_insert(namespace.into());
                        manifests.bindings.push(binding);
                    }
                    None => {}
                }
            }
        }
        if manifests.pipelines.is_empty() && manifests.bindings.is_empty() {
            let files: Vec<String> = paths
                .iter()
                .map(|p| p.as_ref().display().to_string())
                .collect();
            return Err(RenderError::NoResources {
                files: files.join(", "),
            });
        }
        Ok(manifests)
    }

    /// Every child object of every resource, pipelines first.
    pub fn children(&self, defaults: &Defaults) -> Result<Vec<Child>, RenderError> {
        let mut out = Vec::new();
        for pipeline in &self.pipelines {
            out.extend(build::gateway::build(pipeline, defaults).map_err(|source| {
                RenderError::Invalid {
                    kind: "IngestPipeline",
                    name: pipeline.metadata.name.clone().unwrap_or_default(),
                    source,
                }
            })?);
        }
        for binding in &self.bindings {
            let name = binding.metadata.name.clone().unwrap_or_default();
            let wanted = &binding.spec.pipeline_ref.name;
            let pipeline = self
                .pipelines
                .iter()
                .find(|p| {
                    p.metadata.name.as_ref() == Some(wanted)
                        && p.metadata.namespace == binding.metadata.namespace
                })
                .ok_or_else(|| RenderError::MissingPipeline {
                    binding: name.clone(),
                    pipeline: wanted.clone(),
                })?;
            out.extend(
                build::sink::build(binding, pipeline, defaults).map_err(|source| {
                    RenderError::Invalid {
                        kind: "SinkBinding",
                        name,
                        source,
                    }
                })?,
            );
        }
        Ok(out)
    }
}

/// What an API server with the CRDs installed would refuse of a document's identity,
/// checked offline: a kind or apiVersion of the `weir.dev` group it does not serve, or a
/// missing or invalid `metadata.name`. `None`: a document of another group, which render
/// skips. Field types ([`typed`]) and the CRDs' rules ([`check_rules`]) come next.
fn admit(value: &serde_yaml::Value) -> Result<Option<Kind>, String> {
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).unwrap_or_default();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    let weir_kind = match Kind::from_name(kind) {
        Some(weir_kind) => weir_kind,
        None if group == GROUP => {
            return Err(format!(
                "kind {kind:?} is not served by {GROUP}: use IngestPipeline or SinkBinding"
            ));
        }
        _ => return Ok(None),
    };
    let crd = &CRDS[weir_kind as usize];
    let served = format!("{}/{}", crd.spec.group, crd.spec.versions[0].name);
    if api_version != served {
        return Err(format!(
            "apiVersion {api_version:?}: {kind} is served as {served}"
        ));
    }
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(format!("{kind} has no metadata.name"));
    }
    if !is_dns_label(name) {
        return Err(format!(
            "metadata.name {name:?}: must be lowercase letters, digits and '-', start and end with a letter or digit, at most 63 characters"
        ));
    }
    Ok(Some(weir_kind))
}

/// The CRDs' rules on a document whose fields have the right types.
fn check_rules(kind: Kind, value: &serde_yaml::Value) -> Result<(), String> {
    let object = serde_json::to_value(value).map_err(|e| e.to_string())?;
    let broken = weir_crds::rules::broken(kind, &object);
    if broken.is_empty() {
        return Ok(());
    }
    let messages: Vec<String> = broken.iter().map(ToString::to_string).collect();
    Err(messages.join("; "))
}

const GROUP: &str = "weir.dev";

/// The CRDs, generated once per process rather than per document.
static CRDS: std::sync::LazyLock<
    [k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        2],
> = std::sync::LazyLock::new(weir_crds::crds);

/// A DNS-1123 label: child objects (Deployment, Service, …) are named from it.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Deserializes a resource, naming the path of a field of the wrong type.
fn typed<T: serde::de::DeserializeOwned>(value: &serde_yaml::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

/// The objects as a multi-document YAML stream.
pub fn to_yaml_stream(children: &[Child]) -> String {
    children
        .iter()
        .map(|c| serde_yaml::to_string(&c.to_json()).expect("objects serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}
