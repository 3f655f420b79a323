//! The edge through the real binary: RTMPS listeners (certificates made
//! with openssl at test time, reloaded on SIGHUP) in front of nginx-rtmp
//! with ffmpeg publishing and ffprobe playing, and PROXY headers from a
//! trusted load balancer (a client bound to 127.0.0.2) carried through
//! to the access log, `/streams` and the media server.
//!
//! Every process is the test's child and killed on drop; every wait is
//! bounded; nothing asserts how long anything took.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::media::{ffprobe, Nginx, Publisher};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn rejected(reason: &str) -> String {
    format!("rtmp_proxy_connections_rejected_total{{reason=\"{reason}\"}}")
}

/// A self-signed certificate for 127.0.0.1 with `serial`, written over
/// `cert` and `key` (each replaced whole, as a deploy would).
fn certificate(dir: &Path, serial: u32) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (new_cert, new_key) = (dir.join("cert.new"), dir.join("key.new"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-set_serial", &serial.to_string(), "-keyout"])
        .arg(&new_key)
        .arg("-out")
        .arg(&new_cert)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (scripts/install-deps installs it)");
    assert!(made.success());
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    (cert, key)
}

/// The serial of the certificate `addr` presents, as openssl prints it
/// (`serial=0A`).
fn served_serial(addr: SocketAddr) -> String {
    let hello = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl x509");
    if let Some(mut stdin) = x509.stdin.take() {
        let _ = std::io::Write::write_all(&mut stdin, &hello.stdout);
    }
    let out = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn tls_config(tls: SocketAddr, cert: &Path, key: &Path) -> String {
    format!(
        "  tls:\n    - listen: \"{tls}\"\n      cert: \"{}\"\n      key: \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// Acceptance 1 and 2: ffmpeg publishes over RTMPS through the proxy to
/// nginx-rtmp; it is listed and plays back over RTMPS; a new certificate
/// and SIGHUP make new clients see it while the stream runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rtmps_publishes_play_back_and_certificates_reload_under_a_live_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), 0x0A);
    let server = Nginx::start(false).await;
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start(&format!(
        "{}  health_check:\n    interval: 60s\n  backends:\n    static:\n{}",
        tls_config(tls, &cert, &key),
        server.yaml(2)
    ))
    .await;
    let key_name = "tlsKey0001";
    let rtmps = |key: &str| format!("rtmps://{tls}/stream/{key}");
    let mut publisher = Publisher::start(&rtmps(key_name), dir.path(), "rtmps");
    assert!(
        server
            .wait_publishing(key_name, Duration::from_secs(20))
            .await,
        "{}\n{}",
        proxy.log_text(),
        publisher.log()
    );
    // Listed once the server's Publish.Start is through the proxy.
    let listed = wait_until(Duration::from_secs(10), || {
        http_get_blocking(proxy.admin, "/streams")
            .is_ok_and(|(_, body)| body.contains(r#""key": "tls…""#))
    })
    .await;
    assert!(listed, "{}", proxy.log_text());
    let (seen, said) = ffprobe(&rtmps(key_name)).await;
    assert_eq!(seen, ["video"], "{said}\n{}", proxy.log_text());
    assert_eq!(served_serial(tls), "serial=0A");

    certificate(dir.path(), 0x0B);
    proxy.signal("HUP");
    let reloaded = wait_until(Duration::from_secs(10), || {
        served_serial(tls) == "serial=0B"
    })
    .await;
    assert!(reloaded, "{}", proxy.log_text());
    // A bad file keeps the certificate in use.
    std::fs::write(&cert, "garbage").unwrap();
    proxy.signal("HUP");
    let said = wait_until(Duration::from_secs(10), || {
        proxy.log_text().contains("certificate not reloaded")
    })
    .await;
    assert!(said, "{}", proxy.log_text());
    assert_eq!(served_serial(tls), "serial=0B");
    assert!(publisher.running(), "{}", publisher.log());
    assert!(server.publishing(key_name));
}

/// Acceptance 3: a client that sends nothing, or half a ClientHello, to
/// the TLS port is closed at `handshake_timeout`, takes no slot and is
/// counted; a bad certificate at start-up names its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_and_half_tls_clients_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), 1);
    let media = Backend::start("media", Mode::Rtmp).await;
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start(&format!(
        "  handshake_timeout: 1s\n{}  health_check:\n    kind: tcp\n    interval: 60s\n{}",
        tls_config(tls, &cert, &key),
        statics(&[media.yaml(10, 1)])
    ))
    .await;
    let checked = wait_until(Duration::from_secs(10), || media.accepted() >= 1).await;
    assert!(checked);
    let before = media.accepted();
    let mut silent = TcpStream::connect(tls).await.unwrap();
    let mut half = TcpStream::connect(tls).await.unwrap();
    // A TLS record header announcing 512 bytes of handshake, and 40 of them.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    half.write_all(&[0x01; 40]).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await);
    assert!(closed_within(&mut half, Duration::from_secs(10)).await);
    let mut counted = 0.0;
    for _ in 0..100 {
        counted = proxy.metric(&rejected("handshake_timeout")).await;
        if counted == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, 2.0, "{}", proxy.log_text());
    // Not TLS at all: counted apart.
    let mut plain = TcpStream::connect(tls).await.unwrap();
    plain
        .write_all(&FFMPEG_PUBLISH[..RTMP_C0C1_LEN])
        .await
        .unwrap();
    // It gets a TLS alert, then the close.
    let mut alert = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut alert)).await;
    assert!(ended.is_ok(), "{}", proxy.log_text());
    let tls_failed = wait_until(Duration::from_secs(5), || {
        proxy.log_text().contains("TLS handshake failed")
    })
    .await;
    assert!(tls_failed, "{}", proxy.log_text());
    assert_eq!(proxy.metric(&rejected("tls_handshake")).await, 1.0);
    assert_eq!(
        media.accepted(),
        before,
        "a client reached the media server"
    );

    // A certificate that is not one: start-up fails, naming the file.
    std::fs::write(&cert, "not PEM").unwrap();
    let (code, said) = run_binary(&["-t", "-c", &{
        let conf = dir.path().join("bad.yaml");
        std::fs::write(
            &conf,
            format!("---\nversion: 1\nproxy:\n{}", tls_config(tls, &cert, &key)),
        )
        .unwrap();
        conf.to_str().unwrap().to_owned()
    }]);
    assert_ne!(code, 0);
    assert!(
        said.contains(&format!(
            "proxy.tls[0]: certificate {}: no CERTIFICATE in the file",
            cert.display()
        )),
        "{said}"
    );
}

/// A client bound to `from` that opens with `header`.
async fn client_from(from: &str, to: SocketAddr, header: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    stream.write_all(header).await.unwrap();
    stream
}

fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

/// Acceptance 4: a PROXY v2 header from a trusted load balancer (a client
/// bound to 127.0.0.2) gives the publisher's address to `/streams`, the
/// access log and the PROXY v1 header the media server gets; from an
/// untrusted source, or missing, the connection is closed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trusted_load_balancers_proxy_header_names_the_publisher() {
    let (backend, mut seen) = proxy_header_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "  access_log: \"{}\"\n  send_proxy: v1\n  accept_proxy:\n    mode: v2\n    trusted: [127.0.0.2/32]\n\
         \x20 health_check:\n    kind: tcp\n    interval: 60s\n  backends:\n    static:\n      - addr: \"{backend}\"\n",
        access.display()
    ))
    .await;
    let publisher: SocketAddr = "203.0.113.9:50412".parse().unwrap();
    let header = v2_header(publisher, proxy.listen);
    let mut client = client_from("127.0.0.2", proxy.listen, &header).await;
    assert!(publish_recorded(&mut client).await, "{}", proxy.log_text());
    let got = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the media server saw the connection")
        .unwrap()
        .unwrap();
    assert_eq!((got.version, got.source), ("v1", publisher));
    let listed = streams(&proxy).await;
    assert_eq!(listed[0]["client"], publisher.to_string(), "{listed:#?}");
    drop(client);
    let logged = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .contains(r#""client":"203.0.113.9:50412""#)
    })
    .await;
    assert!(
        logged,
        "{}",
        std::fs::read_to_string(&access).unwrap_or_default()
    );

    // The same header from an address that is not trusted.
    let mut untrusted = client_from("127.0.0.1", proxy.listen, &header).await;
    assert!(closed_within(&mut untrusted, Duration::from_secs(10)).await);
    // A trusted source without a header.
    let mut bare = client_from("127.0.0.2", proxy.listen, &FFMPEG_PUBLISH[..RTMP_C0C1_LEN]).await;
    assert!(closed_within(&mut bare, Duration::from_secs(10)).await);
    for reason in ["proxy_header_untrusted", "proxy_header_invalid"] {
        let mut counted = 0.0;
        for _ in 0..100 {
            counted = proxy.metric(&rejected(reason)).await;
            if counted == 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(counted, 1.0, "{reason}: {}", proxy.log_text());
    }
}
