//! TLS on the HTTP/WebSocket and gRPC listeners (rustls, aws-lc-rs), with certificates
//! reloaded when their files change.
//!
//! Invariants:
//! - Both ports share one certificate slot; a reload swaps it whole, so a handshake uses
//!   either the old pair or the new one. Open connections keep the session they have.
//! - A pair that does not load (a file half written, a key that does not match the
//!   certificate) is logged and counted, and the previous pair keeps serving; at start
//!   it stops the gateway with an error naming the file.
//! - The handshake runs in the connection's own task, within `limits.headerReadTimeout`,
//!   so a client that never finishes it holds up no one else.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;
use weir_crds::settings::TlsFiles;

use super::metrics::Metrics;

/// The current certificate and key.
struct CertificateSlot(ArcSwap<CertifiedKey>);

impl fmt::Debug for CertificateSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertificateSlot")
    }
}

impl ResolvesServerCert for CertificateSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The TLS acceptors of both ports.
pub struct Tls {
    slot: Arc<CertificateSlot>,
    provider: Arc<CryptoProvider>,
    /// HTTP/1.1 and HTTP/2 (ALPN), for the HTTP/WebSocket port.
    pub http: TlsAcceptor,
    /// HTTP/2 only, for gRPC.
    pub grpc: TlsAcceptor,
}

impl Tls {
    /// Loads the pair; an unreadable or mismatched pair is an error that names the file.
    pub fn load(files: &TlsFiles) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certified = load_pair(&files.cert, &files.key, &provider)?;
        let slot = Arc::new(CertificateSlot(ArcSwap::from_pointee(certified)));
        let config = |alpn: &[&[u8]]| -> anyhow::Result<TlsAcceptor> {
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .with_no_client_auth()
                .with_cert_resolver(slot.clone());
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(Self {
            http: config(&[b"h2", b"http/1.1"])?,
            grpc: config(&[b"h2"])?,
            slot,
            provider,
        })
    }

    /// Reloads the pair when either file changes, until `stop`.
    pub fn watch(
        self: &Arc<Self>,
        files: &TlsFiles,
        metrics: Arc<Metrics>,
        stop: &CancellationToken,
    ) {
        for path in [&files.cert, &files.key] {
            let this = self.clone();
            let files = files.clone();
            super::reload::spawn_reloader(
                path.clone(),
                "tls",
                files.reload_interval,
                std::fs::read(path).ok(),
                stop.clone(),
                metrics.clone(),
                move |_| {
                    let certified = load_pair(&files.cert, &files.key, &this.provider)
                        .map_err(|e| format!("{e:#}"))?;
                    this.slot.0.store(Arc::new(certified));
                    Ok(())
                },
            );
        }
    }
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let cert_pem = read(cert, "listen.tls.certFile")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("listen.tls.certFile {}: not PEM", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "listen.tls.certFile {}: no CERTIFICATE block",
            cert.display()
        );
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key, "listen.tls.keyFile")?)
        .with_context(|| format!("listen.tls.keyFile {}: no PEM private key", key.display()))?;
    CertifiedKey::from_der(chain, key_der, provider).with_context(|| {
        format!(
            "listen.tls.keyFile {} does not fit listen.tls.certFile {}",
            key.display(),
            cert.display()
        )
    })
}
