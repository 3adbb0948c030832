//! `weir-operator render`: the objects the operator would apply for some manifests,
//! computed offline by the same builders, for review in GitOps pull requests.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use weir_crds::resources::{IngestPipeline, SinkBinding};

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
                match value.get("kind").and_then(|k| k.as_str()) {
                    Some("IngestPipeline") => {
                        let mut pipeline: IngestPipeline =
                            serde_yaml::from_value(value).map_err(|e| parse(e.to_string()))?;
                        pipeline.metadata.namespace.get_or_insert(namespace.into());
                        manifests.pipelines.push(pipeline);
                    }
                    Some("SinkBinding") => {
                        let mut binding: SinkBinding =
                            serde_yaml::from_value(value).map_err(|e| parse(e.to_string()))?;
                        binding.metadata.namespace.get_or_insert(namespace.into());
                        manifests.bindings.push(binding);
                    }
                    _ => {}
                }
            }
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

/// The objects as a multi-document YAML stream.
pub fn to_yaml_stream(children: &[Child]) -> String {
    children
        .iter()
        .map(|c| serde_yaml::to_string(&c.to_json()).expect("objects serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}
