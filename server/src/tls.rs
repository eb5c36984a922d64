//! The server's TLS identity: a self-signed certificate made on first start and
//! kept in the state directory, or one the operator configures.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The name every xpupool server certificate carries; clients verify against it.
pub const SERVER_NAME: &str = "xpupool-server";

/// A certificate chain and its key, with where the certificate lives on disk.
pub struct Identity {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// PEM file of the leaf certificate, to hand to clients.
    pub cert_path: PathBuf,
}

impl Identity {
    /// `sha256:<hex>` of the leaf certificate's DER, for pinning.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }
}

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

/// Loads `cert`/`key` PEM files.
pub fn load(cert: &Path, key: &Path) -> Result<Identity> {
    let chain = rustls_pemfile::certs(
        &mut fs::read(cert)
            .with_context(|| format!("reading {}", cert.display()))?
            .as_slice(),
    )
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("parsing {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key = rustls_pemfile::private_key(
        &mut fs::read(key)
            .with_context(|| format!("reading {}", key.display()))?
            .as_slice(),
    )
    .with_context(|| format!("parsing {}", key.display()))?
    .with_context(|| format!("{} holds no private key", key.display()))?;
    Ok(Identity {
        chain,
        key,
        cert_path: cert.to_owned(),
    })
}

/// Loads the self-signed server identity from `dir`, making it on first use.
pub fn load_or_create(dir: &Path) -> Result<Identity> {
    load_or_create_as(dir, "server", SERVER_NAME)
}

/// Loads the self-signed identity `ROLE-cert.pem`/`ROLE-key.pem` from `dir`,
/// making it on first use for the certificate name `name`.
pub fn load_or_create_as(dir: &Path, role: &str, name: &str) -> Result<Identity> {
    let cert_path = dir.join(format!("{role}-cert.pem"));
    let key_path = dir.join(format!("{role}-key.pem"));
    if !cert_path.exists() || !key_path.exists() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()])?;
        write_private(&key_path, certified.key_pair.serialize_pem().as_bytes())?;
        fs::write(&cert_path, certified.cert.pem())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        tracing::info!(path = %cert_path.display(), "made a self-signed {role} certificate");
    }
    load(&cert_path, &key_path)
}

/// The secret kept in the file `path` (made, random, on first use; owner-only).
pub fn load_or_create_secret(path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        _ => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let secret = format!("{}{}", crate::random_token(), crate::random_token());
            write_private(path, secret.as_bytes())?;
            Ok(secret)
        }
    }
}

/// Makes a throw-away identity in `dir` (used by the embedded server).
pub fn create_ephemeral(dir: &Path) -> Result<Identity> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
    let cert_path = dir.join("server-cert.pem");
    fs::write(&cert_path, certified.cert.pem())?;
    Ok(Identity {
        chain: vec![certified.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into()),
        cert_path,
    })
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// A QUIC server configuration presenting `identity` over TLS 1.3 only, for the
/// application protocol `alpn`, with `transport`.
pub fn quic_server_config(
    identity: Identity,
    alpn: &[u8],
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(identity.chain, identity.key)
    .context("the certificate and key")?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
    config.transport_config(std::sync::Arc::new(transport));
    Ok(config)
}
