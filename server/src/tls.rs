//! TLS on the client listener (`--tls-cert`, `--tls-key`): HTTPS and WSS
//! on the one port, with rustls.
//!
//! rustls is driven here without I/O of its own (its `ServerConnection`
//! is a state machine fed and drained by the caller), not through an
//! async stream wrapper: the WebSocket write path writes raw bytes to the
//! socket from the shard's flusher (`out.rs`), one `send` per connection
//! per turn, and a stream wrapper would take that from TLS connections.
//! Here a TLS connection keeps it: what a turn produced is sealed into
//! records and leaves in one `send` of ciphertext.
//!
//! The certificate chain and key are re-read on SIGHUP: connections that
//! start afterwards get the new pair, open ones keep theirs. A pair that
//! does not load (a missing file, a key that does not match the
//! certificate) keeps the old one and says why.
//!
//! Invariants: a connection's ciphertext leaves in the order rustls made
//! it (every writer drains rustls' one queue from its front); rustls holds
//! at most [`SEALED_BYTES_MAX`] bytes of a connection's output not yet
//! sent, on top of what the connection's own buffer holds.

use std::cell::RefCell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;

/// Bytes of output, plaintext and sealed, rustls holds per connection at
/// most (past it, the rest waits in the connection's own buffer).
pub const SEALED_BYTES_MAX: usize = 64 << 10;

/// A connection's TLS state, shared by its task (reads) and the shard's
/// flusher (writes), on one thread.
pub type Session = Rc<RefCell<ServerConnection>>;

/// The listener's TLS: its configuration and the certificate it serves.
pub struct Tls {
    config: Arc<ServerConfig>,
    certs: Arc<Certs>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.certs.cert)
            .field("key", &self.certs.key)
            .finish()
    }
}

/// The certificate chain and key, from their files, swapped on reload.
#[derive(Debug)]
struct Certs {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("never poisoned").clone())
    }
}

impl Tls {
    /// Loads the chain (`cert`, PEM, the server's own certificate first)
    /// and its key (`key`, PEM: PKCS#8, PKCS#1 or SEC1).
    ///
    /// Errors: a message naming the file and what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, String> {
        // ring: the provider async-nats already links (aws-lc-rs, which
        // rustls now prefers for its post-quantum key exchange, would add
        // a C build of a second crypto library to every build).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = certified_key(cert, key, &provider)?;
        let certs = Arc::new(Certs {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider: provider.clone(),
            current: RwLock::new(Arc::new(current)),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            certs,
        })
    }

    /// Reads the files again; the new pair serves connections from now on.
    /// A pair that does not load leaves the old one serving.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = certified_key(&self.certs.cert, &self.certs.key, &self.certs.provider)?;
        *self.certs.current.write().expect("never poisoned") = Arc::new(fresh);
        Ok(())
    }

    /// A new connection's TLS state (its handshake not yet begun).
    pub fn accept(&self) -> Session {
        let mut conn = ServerConnection::new(self.config.clone())
            .expect("a server configuration with a certificate resolver is complete");
        conn.set_buffer_limit(Some(SEALED_BYTES_MAX));
        Rc::new(RefCell::new(conn))
    }
}

fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate (PEM, `BEGIN CERTIFICATE`) in it",
            cert.display()
        ));
    }
    let secret = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, secret, provider).map_err(|e| {
        format!(
            "--tls-key {} with --tls-cert {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// What feeding received bytes to a session gave.
pub enum Fed {
    /// Plaintext bytes handed on (0: the bytes held no complete record).
    Plain(usize),
    /// The peer ended the session (`close_notify`).
    Closed,
}

/// Feeds `raw` (bytes read from the socket) to `session`, handing the
/// plaintext it yields to `take`: all of `raw` is consumed. Handshake
/// messages and alerts it must answer wait in the session (`wants_write`)
/// for the caller to send.
///
/// Errors: the peer broke the protocol (the session holds the alert).
pub fn feed(
    session: &mut ServerConnection,
    mut raw: &[u8],
    plain: &mut [u8],
    take: &mut impl FnMut(&[u8]),
) -> std::io::Result<Fed> {
    let mut handed = 0;
    loop {
        if !raw.is_empty() {
            match session.read_tls(&mut raw) {
                // After `close_notify`: what came before it is handed on
                // first.
                Ok(0) if handed > 0 => return Ok(Fed::Plain(handed)),
                Ok(0) => return Ok(Fed::Closed),
                Ok(_) => {}
                // The plaintext buffer is full: it is drained below.
                Err(e) if e.kind() == std::io::ErrorKind::Other => {}
                Err(e) => return Err(e),
            }
        }
        let state = session
            .process_new_packets()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            let n = session.reader().read(plain)?;
            take(&plain[..n]);
            handed += n;
            left -= n;
        }
        if state.peer_has_closed() && raw.is_empty() {
            return Ok(if handed > 0 {
                Fed::Plain(handed)
            } else {
                Fed::Closed
            });
        }
        if raw.is_empty() {
            return Ok(Fed::Plain(handed));
        }
    }
}

/// Seals `plain` into the session's output, as much as it takes (up to
/// [`SEALED_BYTES_MAX`] held); how many bytes it took.
///
/// Errors: the session failed (a fatal alert sent or received): nothing
/// more is written on it.
pub fn seal(session: &mut ServerConnection, plain: &[u8]) -> std::io::Result<usize> {
    use std::io::Write;
    session.writer().write(plain)
}
