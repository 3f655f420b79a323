//! What comes before a client's RTMP on a listener: a PROXY protocol
//! header from a load balancer in front (`accept_proxy`), and TLS
//! (`proxy.tls`). Both are read within the client's `handshake_timeout`,
//! on the connection's own task, before anything is spent on it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use log::{info, warn};
use parking_lot::RwLock;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{AcceptProxy, ProxyMode, TlsListener};
use crate::reason::Reason;

/// Longest PROXY v1 line (the specification's bound, CRLF included).
const MAX_V1: usize = 107;
/// Longest PROXY v2 address block and TLVs accepted. An NLB's TLVs (VPC
/// endpoint id, ...) take tens of bytes; the format allows 64 KiB.
const MAX_V2_BODY: usize = 2048;
const V2_PREFIX: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A client connection as the proxy serves it: plain TCP or TLS over it.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket underneath.
    fn socket(&self) -> &TcpStream;
    /// The socket itself, to pass to a new process of an upgrade; `None`
    /// for a TLS session, whose state cannot leave this process.
    fn into_socket(self) -> Option<TcpStream>;
}

impl ClientIo for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }

    fn into_socket(self) -> Option<TcpStream> {
        Some(self)
    }
}

impl ClientIo for TlsStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn into_socket(self) -> Option<TcpStream> {
        None
    }
}

/// One listener's edge: whether a PROXY header opens each connection and
/// whether TLS follows.
pub struct Edge {
    /// The listener's config key, for logs.
    pub name: String,
    accept_proxy: AcceptProxy,
    tls: Option<Arc<Certificate>>,
}

/// Why a connection was closed at the edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("PROXY header from {0}, which is not in accept_proxy.trusted")]
    Untrusted(IpAddr),
    #[error("no valid PROXY header ({0})")]
    BadHeader(String),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("no {0} within handshake_timeout")]
    Timeout(&'static str),
}

impl EdgeError {
    pub fn reason(&self) -> Reason {
        match self {
            Self::Untrusted(_) => Reason::ProxyHeaderUntrusted,
            Self::BadHeader(_) => Reason::ProxyHeaderInvalid,
            Self::Tls(_) => Reason::TlsHandshake,
            Self::Timeout(_) => Reason::HandshakeTimeout,
        }
    }
}

impl Edge {
    /// A listener with neither: plain clients, addresses from the socket.
    pub fn plain(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            accept_proxy: AcceptProxy::default(),
            tls: None,
        }
    }

    pub fn new(name: &str, accept_proxy: &AcceptProxy, tls: Option<Arc<Certificate>>) -> Self {
        Self {
            name: name.to_owned(),
            accept_proxy: accept_proxy.clone(),
            tls,
        }
    }

    pub fn tls(&self) -> Option<&Arc<Certificate>> {
        self.tls.as_ref()
    }

    /// The client's and our address as the PROXY header gives them, read
    /// (exactly, leaving the client's own bytes in the socket) by
    /// `deadline`; `None` when the listener takes no header, or the header
    /// names none (a load balancer's own health check).
    pub async fn proxy_header(
        &self,
        client: &mut TcpStream,
        deadline: Instant,
    ) -> Result<Option<(SocketAddr, SocketAddr)>, EdgeError> {
        let mode = self.accept_proxy.mode;
        if mode == ProxyMode::Off {
            return Ok(None);
        }
        let peer = client
            .peer_addr()
            .map_err(|e| EdgeError::BadHeader(format!("the client is gone: {e}")))?;
        let source = peer.ip().to_canonical();
        if !self
            .accept_proxy
            .trusted
            .iter()
            .any(|c| c.0.contains(&source))
        {
            return Err(EdgeError::Untrusted(source));
        }
        let read = read_header(client, mode);
        match tokio::time::timeout_at(deadline, read).await {
            Ok(header) => header,
            Err(_) => Err(EdgeError::Timeout("PROXY header")),
        }
    }
}

/// Reads one PROXY header of `mode`'s version(s) and its addresses,
/// and not a byte more. Public for the fuzzer.
pub async fn read_header<R: AsyncRead + Unpin>(
    client: &mut R,
    mode: ProxyMode,
) -> Result<Option<(SocketAddr, SocketAddr)>, EdgeError> {
    let bad = |why: &str| EdgeError::BadHeader(why.to_owned());
    let failed = |e: io::Error| EdgeError::BadHeader(format!("the client failed or closed: {e}"));
    let mut head = [0u8; 16];
    client.read_exact(&mut head[..5]).await.map_err(failed)?;
    if &head[..5] == b"PROXY" {
        if mode == ProxyMode::V2 {
            return Err(bad("a v1 header where v2 is required"));
        }
        // Byte by byte: what follows the line is the client's own.
        let mut line = head[..5].to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= MAX_V1 {
                return Err(bad("a v1 line longer than 107 bytes"));
            }
            let mut b = [0u8; 1];
            client.read_exact(&mut b).await.map_err(failed)?;
            line.push(b[0]);
        }
        let header = ppp::v1::Header::try_from(&line[..]).map_err(|e| bad(&e.to_string()))?;
        return Ok(v1_addresses(&header.addresses));
    }
    if head[..5] != V2_PREFIX[..5] {
        return Err(bad("the connection does not open with one"));
    }
    if mode == ProxyMode::V1 {
        return Err(bad("a v2 header where v1 is required"));
    }
    client.read_exact(&mut head[5..]).await.map_err(failed)?;
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_V2_BODY {
        return Err(bad(&format!(
            "a v2 header of {len} bytes, over {MAX_V2_BODY}"
        )));
    }
    let mut whole = head.to_vec();
    whole.resize(16 + len, 0);
    client.read_exact(&mut whole[16..]).await.map_err(failed)?;
    let header = ppp::v2::Header::try_from(&whole[..]).map_err(|e| bad(&e.to_string()))?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        ppp::v2::Addresses::IPv6(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        _ => None,
    })
}

fn v1_addresses(addresses: &ppp::v1::Addresses) -> Option<(SocketAddr, SocketAddr)> {
    match addresses {
        ppp::v1::Addresses::Tcp4(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        ppp::v1::Addresses::Tcp6(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        ppp::v1::Addresses::Unknown => None,
    }
}

/// A TLS listener's certificate and key, read from their PEM files at
/// start-up and again on SIGHUP; sessions keep the one they began with.
pub struct Certificate {
    /// The listener's config key, for logs.
    name: String,
    cert: String,
    key: String,
    acceptor: RwLock<TlsAcceptor>,
}

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {why}")]
pub struct CertificateError {
    what: &'static str,
    path: String,
    why: String,
}

impl Certificate {
    /// Reads `listener`'s files; an error names the file and what is wrong.
    pub fn load(name: &str, listener: &TlsListener) -> Result<Arc<Self>, CertificateError> {
        let acceptor = acceptor(&listener.cert, &listener.key)?;
        Ok(Arc::new(Self {
            name: name.to_owned(),
            cert: listener.cert.clone(),
            key: listener.key.clone(),
            acceptor: RwLock::new(acceptor),
        }))
    }

    /// Reads the files again for new clients; on failure the certificate
    /// in use stays, and the failure is logged.
    pub fn reload(&self) {
        match acceptor(&self.cert, &self.key) {
            Ok(acceptor) => {
                *self.acceptor.write() = acceptor;
                info!("{}: certificate reloaded from {}", self.name, self.cert);
            }
            Err(e) => warn!(
                "{}: certificate not reloaded, the one in use stays: {e}",
                self.name
            ),
        }
    }

    /// The TLS handshake with a client, by `deadline`.
    pub async fn accept(
        &self,
        client: TcpStream,
        deadline: Instant,
    ) -> Result<TlsStream<TcpStream>, EdgeError> {
        let acceptor = self.acceptor.read().clone();
        match tokio::time::timeout_at(deadline, acceptor.accept(client)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(EdgeError::Tls(e)),
            Err(_) => Err(EdgeError::Timeout("TLS handshake")),
        }
    }
}

/// A TLS 1.2/1.3 server config from PEM files.
fn acceptor(cert: &str, key: &str) -> Result<TlsAcceptor, CertificateError> {
    let error = |what, path: &str, why: String| CertificateError {
        what,
        path: path.to_owned(),
        why,
    };
    let read = |what, path: &str| {
        std::fs::read(Path::new(path)).map_err(|e| error(what, path, e.to_string()))
    };
    let pem = read("certificate", cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error("certificate", cert, format!("not PEM ({e})")))?;
    if chain.is_empty() {
        return Err(error(
            "certificate",
            cert,
            "no CERTIFICATE in the file".into(),
        ));
    }
    let pem = read("key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| error("key", key, format!("no usable private key ({e})")))?;
    let config = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(|e| {
        error(
            "key",
            key,
            format!("does not fit the certificate {cert} ({e})"),
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    async fn read_with(
        mode: ProxyMode,
        sent: &[u8],
    ) -> (Result<Option<(SocketAddr, SocketAddr)>, String>, Vec<u8>) {
        let (mut client, mut server) = pair().await;
        client.write_all(sent).await.unwrap();
        client.shutdown().await.unwrap();
        let got = read_header(&mut server, mode)
            .await
            .map_err(|e| e.to_string());
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        (got, rest)
    }

    fn v2(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (source, dest),
        )
        .build()
        .unwrap()
    }

    #[tokio::test]
    async fn headers_give_the_addresses_and_leave_the_clients_bytes() {
        let (src, dst): (SocketAddr, SocketAddr) = (
            "203.0.113.9:50412".parse().unwrap(),
            "10.0.0.5:1935".parse().unwrap(),
        );
        let v1 = b"PROXY TCP4 203.0.113.9 10.0.0.5 50412 1935\r\n\x03rtmp";
        for mode in [ProxyMode::V1, ProxyMode::Any] {
            let (got, rest) = read_with(mode, v1).await;
            assert_eq!(got, Ok(Some((src, dst))));
            assert_eq!(rest, b"\x03rtmp");
        }
        let mut sent = v2(src, dst);
        sent.extend_from_slice(b"\x03rtmp");
        for mode in [ProxyMode::V2, ProxyMode::Any] {
            let (got, rest) = read_with(mode, &sent).await;
            assert_eq!(got, Ok(Some((src, dst))));
            assert_eq!(rest, b"\x03rtmp");
        }
        let (got, _) = read_with(ProxyMode::V1, b"PROXY UNKNOWN\r\n").await;
        assert_eq!(got, Ok(None));
    }

    #[tokio::test]
    async fn bad_headers_are_refused_with_a_reason() {
        let cases: [(ProxyMode, &[u8], &str); 6] = [
            (
                ProxyMode::Any,
                b"\x03\x00\x00\x00\x00rtmp",
                "does not open with one",
            ),
            (
                ProxyMode::V2,
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                "v1 header where v2",
            ),
            (
                ProxyMode::V1,
                b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c",
                "v2 header where v1",
            ),
            (ProxyMode::Any, &[b'P'; 200], "does not open"),
            (
                ProxyMode::Any,
                b"PROXY TCP4 not an address\r\n",
                "no valid PROXY header",
            ),
            (ProxyMode::Any, b"PROXY TCP4 1.2.3.4", "closed"),
        ];
        for (mode, sent, want) in cases {
            let (got, _) = read_with(mode, sent).await;
            let e = got.expect_err("refused");
            assert!(e.contains(want), "{sent:?}: {e}");
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
        let (got, _) = read_with(ProxyMode::Any, &long).await;
        assert!(got.unwrap_err().contains("longer than 107"));
        let mut big = V2_PREFIX.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (got, _) = read_with(ProxyMode::Any, &big).await;
        assert!(got.unwrap_err().contains("over 2048"));
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let missing = missing.to_str().unwrap();
        let e = acceptor(missing, missing).err().unwrap().to_string();
        assert!(e.starts_with(&format!("certificate {missing}: ")), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = junk.to_str().unwrap();
        let e = acceptor(junk, junk).err().unwrap().to_string();
        assert_eq!(e, format!("certificate {junk}: no CERTIFICATE in the file"));
    }
}
