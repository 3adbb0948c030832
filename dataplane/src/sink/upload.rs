//! The object store: opening it from the spec, and uploading a file.
//!
//! Every upload is atomic in every store `object_store` supports: S3 and the other
//! clouds publish an object (single PUT or completed multipart upload) only whole, and
//! the local store writes a temporary file and renames it. So a crash mid-upload leaves
//! no partial file under its final name (S3 may keep the parts of an abandoned
//! multipart upload until a lifecycle rule aborts them).

use std::path::Path as FsPath;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart};
use weir_crds::sink::StorageSpec;

/// The object store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage settings are unusable.
    #[error("storage: {0}")]
    Config(String),
    /// A request failed.
    #[error("{action} {path}: {source}")]
    Request {
        /// What was attempted.
        action: &'static str,
        /// The object.
        path: String,
        /// The store's error.
        source: object_store::Error,
    },
}

impl StoreError {
    pub(crate) fn request(action: &'static str, path: &Path, source: object_store::Error) -> Self {
        Self::Request {
            action,
            path: path.to_string(),
            source,
        }
    }
}

/// An opened store and the prefix everything goes under.
#[derive(Clone)]
pub struct Storage {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Prefix of every path, without slashes at either end.
    pub prefix: String,
    part_size: usize,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({}, prefix {:?})", self.store, self.prefix)
    }
}

impl Storage {
    /// Opens the store the spec names.
    pub fn open(spec: &StorageSpec) -> Result<Self, StoreError> {
        let config = |e: object_store::Error| StoreError::Config(e.to_string());
        let url = spec.url.trim();
        let (store, prefix): (Arc<dyn ObjectStore>, String) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(StoreError::Config(format!("{url:?} names no bucket")));
                }
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(!spec.path_style)
                    .with_retry(RetryConfig {
                        max_retries: 4,
                        retry_timeout: Duration::from_secs(30),
                        ..Default::default()
                    });
                if let Some(endpoint) = &spec.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = &spec.region {
                    builder = builder.with_region(region);
                }
                if let Some(file) = &spec.access_key_id_file {
                    builder = builder.with_access_key_id(read_secret(file)?);
                }
                if let Some(file) = &spec.secret_access_key_file {
                    builder = builder.with_secret_access_key(read_secret(file)?);
                }
                for (key, value) in &spec.options {
                    let key = AmazonS3ConfigKey::from_str(key).map_err(config)?;
                    builder = builder.with_config(key, value);
                }
                (Arc::new(builder.build().map_err(config)?), prefix.into())
            } else if url.contains("://") && !url.starts_with("file://") {
                let parsed = url::Url::parse(url)
                    .map_err(|e| StoreError::Config(format!("{url:?} is not a URL: {e}")))?;
                let (store, path) =
                    object_store::parse_url_opts(&parsed, spec.options.iter()).map_err(config)?;
                (Arc::from(store), path.to_string())
            } else {
                let dir = url.strip_prefix("file://").unwrap_or(url);
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Config(format!("cannot create {dir}: {e}")))?;
                let dir = std::fs::canonicalize(FsPath::new(dir))
                    .map_err(|e| StoreError::Config(format!("{dir}: {e}")))?;
                (
                    Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(config)?),
                    String::new(),
                )
            };
        Ok(Self {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            part_size: spec.part_size.max(5 << 20),
        })
    }

    /// A path under the prefix.
    pub fn path(&self, relative: &str) -> Path {
        Path::from(super::layout::join(&self.prefix, relative))
    }

    /// Uploads a file, replacing any file of that name: in multipart uploads of
    /// `storage.partSize` when it is larger than one part.
    pub async fn upload(&self, relative: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(relative);
        if bytes.len() <= self.part_size {
            self.store
                .put(&path, bytes.into())
                .await
                .map_err(|e| StoreError::request("upload", &path, e))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| StoreError::request("start multipart upload of", &path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        writer.put(bytes);
        writer
            .finish()
            .await
            .map_err(|e| StoreError::request("multipart upload", &path, e))?;
        Ok(())
    }
}

fn read_secret(file: &str) -> Result<String, StoreError> {
    std::fs::read_to_string(file)
        .map(|s| s.trim().to_string())
        .map_err(|e| StoreError::Config(format!("cannot read {file}: {e}")))
}
