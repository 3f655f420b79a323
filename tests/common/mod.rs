//! Shared test harness: the real `rtmp-proxy` binary, real loopback TCP
//! backends and a minimal HTTP client. Every wait is bounded.

#![allow(dead_code)]

pub mod ecs;
pub mod hook;
pub mod media;
pub mod moto;
pub mod redis;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use rtmp_proxy::rtmp::amf0::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_rtmp-proxy");

/// Config line for tests whose clients speak raw TCP rather than RTMP
/// (the default `protocol: rtmp` would close them at the handshake gate).
pub const RAW_TCP: &str = "  protocol: tcp\n";

/// A loopback port that was free a moment ago.
///
/// Never the same port twice in one test binary: the kernel hands a port
/// that was just closed out again, and one config's two listeners then
/// collide (seen once in CI as `admin_listen overlaps listen`).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no loopback port not given before in 100 tries");
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running proxy process, killed on drop.
pub struct Proxy {
    child: Child,
    /// Shared by the processes of an upgrade.
    pub dir: Arc<tempfile::TempDir>,
    pub listen: SocketAddr,
    pub health: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    /// Starts the binary with a config whose `proxy:` section holds the
    /// three listen addresses on free ports plus `extra` (YAML lines
    /// indented by two spaces), and waits until the admin port answers.
    pub async fn start(extra: &str) -> Proxy {
        Self::start_with_env(extra, &[]).await
    }

    /// Like [`Proxy::start`], with extra environment variables.
    pub async fn start_with_env(extra: &str, env: &[(&str, String)]) -> Proxy {
        Self::start_full("", extra, env).await
    }

    /// Like [`Proxy::start`], with top-level (Pingora) YAML lines too.
    ///
    /// A port from [`free_port`] is free when picked, but another test can
    /// take it before the proxy binds it: a proxy that exits because an
    /// address is in use is started again on fresh ports (three tries).
    pub async fn start_full(top: &str, extra: &str, env: &[(&str, String)]) -> Proxy {
        for _ in 0..3 {
            let mut proxy = Self::spawn_full(top, extra, env);
            // Not probed through the proxy port: a probe would be a client.
            let (admin, health) = (proxy.admin, proxy.health);
            let mut exited = false;
            let up = wait_until(Duration::from_secs(20), || {
                exited = matches!(proxy.child.try_wait(), Ok(Some(_)));
                exited
                    || (http_get_blocking(admin, "/backends").is_ok()
                        && http_get_blocking(health, "/health").is_ok())
            })
            .await;
            if exited && proxy.log_text().contains("Address already in use") {
                continue;
            }
            assert!(
                up && !exited,
                "proxy did not come up; log:\n{}",
                proxy.log_text()
            );
            return proxy;
        }
        panic!("proxy found its ports taken in three tries");
    }

    /// Writes the config and starts the process without waiting.
    pub fn spawn(extra: &str, env: &[(&str, String)]) -> Proxy {
        Self::spawn_full("", extra, env)
    }

    fn spawn_full(top: &str, extra: &str, env: &[(&str, String)]) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let conf = format!(
            "---\nversion: 1\nthreads: 2\npid_file: {d}/proxy.pid\nupgrade_sock: {d}/upgrade.sock\n{top}\
             proxy:\n  listen: \"{listen}\"\n  health_listen: \"{health}\"\n  admin_listen: \"{admin}\"\n{extra}",
            d = dir.path().display()
        );
        let conf_path = dir.path().join("proxy.yaml");
        std::fs::write(&conf_path, conf).expect("write config");
        let log = dir.path().join("proxy.log");
        let child = spawn_binary(&["-c", conf_path.to_str().unwrap()], &log, env);
        Proxy {
            child,
            dir: Arc::new(dir),
            listen,
            health,
            admin,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `"TERM"`) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    /// The exit code once the process has exited within `limit`, else None.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status.code().unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// A binary upgrade as an operator does it: starts a new process with
    /// `-u` and the same config, waits until it listens on `upgrade_sock`,
    /// then sends SIGQUIT to this one. Returns the new process once it has
    /// the sockets and this one has stopped accepting.
    pub async fn upgrade(&self) -> Proxy {
        let n = UPGRADES.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.path().join(format!("proxy-upgrade-{n}.log"));
        let conf = self.dir.path().join("proxy.yaml");
        let child = spawn_binary(&["-u", "-c", conf.to_str().unwrap()], &log, &[]);
        let new = Proxy {
            child,
            dir: self.dir.clone(),
            listen: self.listen,
            health: self.health,
            admin: self.admin,
            log,
        };
        let sock = self.dir.path().join("upgrade.sock");
        let waiting = wait_until(Duration::from_secs(10), || unix_listener_exists(&sock)).await;
        assert!(
            waiting,
            "new process never listened on {}:\n{}",
            sock.display(),
            new.log_text()
        );
        self.signal("QUIT");
        let pid_file = self.dir.path().join("proxy.pid");
        let new_pid = new.pid().to_string();
        let serving = wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == new_pid)
        })
        .await;
        assert!(
            serving,
            "new process did not take over:\n{}",
            new.log_text()
        );
        // Both accept on the shared sockets for a few seconds; wait until
        // only the new one does, so the admin port answers for it.
        let closed = wait_until(Duration::from_secs(20), || {
            self.log_text().contains("listeners closed")
        })
        .await;
        assert!(
            closed,
            "old process never closed its listeners:\n{}",
            self.log_text()
        );
        new
    }

    /// `/backends` as JSON.
    pub async fn backends(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.admin, "/backends")
            .await
            .expect("GET /backends");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("/backends is JSON")
    }

    /// Field `field` of the backend at `addr` in `/backends`.
    pub async fn backend_field(&self, addr: SocketAddr, field: &str) -> serde_json::Value {
        self.backends()
            .await
            .into_iter()
            .find(|b| b["addr"] == addr.to_string())
            .map(|b| b[field].clone())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The value of a counter in `/metrics`, 0 when absent.
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, body) = http_get(self.admin, "/metrics")
            .await
            .expect("GET /metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)?
                    .strip_prefix(' ')?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// Connects to the proxy port, retrying while it is not bound yet
    /// (Pingora binds each service's listeners independently).
    pub async fn connect(&self) -> TcpStream {
        for _ in 0..100 {
            match TcpStream::connect(self.listen).await {
                Ok(s) => return s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("connect to proxy: {e}"),
            }
        }
        panic!("proxy port {} never accepted", self.listen)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static UPGRADES: AtomicUsize = AtomicUsize::new(0);

/// True when a process listens on the Unix socket at `path`.
pub fn unix_listener_exists(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let want = path.to_string_lossy();
    table.lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 8
            && cols[7] == want
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & 0x1_0000 != 0)
    })
}

/// Not an environment variable: in `env`, the open-file limit (soft and
/// hard) the binary starts with.
pub const NOFILE: &str = "RLIMIT_NOFILE";

/// Runs the binary with `args`, stdout and stderr to `log`.
pub fn spawn_binary(args: &[&str], log: &Path, env: &[(&str, String)]) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = Command::new(BIN);
    if let Some((_, n)) = env.iter().find(|(k, _)| *k == NOFILE) {
        let n: u64 = n.parse().expect("a number of descriptors");
        use std::os::unix::process::CommandExt;
        // SAFETY: only a system call between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                    .map_err(std::io::Error::from)
            });
        }
    }
    cmd.args(args)
        .env("RUST_LOG", "info")
        .envs(
            env.iter()
                .filter(|(k, _)| *k != NOFILE)
                .map(|(k, v)| (k, v)),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn rtmp-proxy")
}

/// Runs the binary to completion (bounded) and returns (exit code, output).
pub fn run_binary(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("out.log");
    let mut child = spawn_binary(args, &log, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "rtmp-proxy {args:?} still running after 20 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// GET over a fresh connection; (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http_get_blocking(addr, &path))
        .await
        .expect("http task")
}

pub fn http_get_blocking(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = StdStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {raw:?}")))?;
    Ok((status, body.to_string()))
}

/// How a test backend behaves on each connection.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Sends `name\n`, then echoes everything.
    TaggedEcho,
    /// Reads everything, hashing it, while sending `n` pseudo-random bytes
    /// seeded by `seed`; then reports the hash of what it read.
    Exchange { n: usize, seed: u64 },
    /// An RTMP server as far as the proxy's front needs one: answers the
    /// handshake, starts the first publish it is sent, then reads on.
    Rtmp,
}

/// Counters a backend keeps about its own connections.
#[derive(Default, Debug)]
pub struct BackendStats {
    pub accepted: AtomicUsize,
    pub current: AtomicUsize,
    pub peak: AtomicUsize,
    /// Hashes of the streams read on finished `Exchange` connections.
    pub hashes: Mutex<Vec<u64>>,
}

/// A loopback TCP backend.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<BackendStats>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str, mode: Mode) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap(), mode).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr, mode: Mode) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(BackendStats::default());
        let task = tokio::spawn(accept_loop(listener, name.to_string(), mode, stats.clone()));
        Backend {
            name: name.to_string(),
            addr,
            stats,
            task,
        }
    }

    /// Stops listening (live connections keep running).
    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }
    pub fn current(&self) -> usize {
        self.stats.current.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.stats.peak.load(Ordering::SeqCst)
    }

    /// A config line for `proxy.backends.static`.
    pub fn yaml(&self, weight: usize, max: usize) -> String {
        format!(
            "      - addr: \"{}\"\n        weight: {weight}\n        max_connections: {max}\n",
            self.addr
        )
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, name: String, mode: Mode, stats: Arc<BackendStats>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::SeqCst);
        let now = stats.current.fetch_add(1, Ordering::SeqCst) + 1;
        stats.peak.fetch_max(now, Ordering::SeqCst);
        let stats = stats.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let _ = serve(&mut sock, &name, mode, &stats).await;
            // Counted down before the socket closes: the proxy may reuse the
            // slot as soon as it sees the close, and `peak` must not count
            // this connection and the next one at once.
            stats.current.fetch_sub(1, Ordering::SeqCst);
            drop(sock);
        });
    }
}

async fn serve(
    sock: &mut TcpStream,
    name: &str,
    mode: Mode,
    stats: &BackendStats,
) -> std::io::Result<()> {
    match mode {
        Mode::TaggedEcho => {
            sock.write_all(format!("{name}\n").as_bytes()).await?;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = sock.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                sock.write_all(&buf[..n]).await?;
            }
        }
        Mode::Exchange { n, seed } => {
            let (mut rd, mut wr) = sock.split();
            let send = async move {
                write_random(&mut wr, n, seed).await?;
                wr.shutdown().await
            };
            let (sent, hash) = tokio::join!(send, hash_to_end(&mut rd));
            sent?;
            stats.hashes.lock().unwrap().push(hash?);
            Ok(())
        }
        Mode::Rtmp => answer_publish(sock, &on_status("status", "NetStream.Publish.Start")).await,
    }
}

/// xorshift64*: a deterministic byte stream for integrity checks.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Prng(seed | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub async fn write_random<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    n: usize,
    seed: u64,
) -> std::io::Result<()> {
    let mut rng = Prng::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len());
        rng.fill(&mut buf[..k]);
        w.write_all(&buf[..k]).await?;
        left -= k;
    }
    w.flush().await
}

/// FNV-1a over the whole stream: independent of how reads split it.
pub async fn hash_to_end<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(h);
        }
        for &b in &buf[..n] {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Hash of what `write_random(n, seed)` sends.
pub fn expected_hash(n: usize, seed: u64) -> u64 {
    let mut rng = Prng::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len());
        rng.fill(&mut buf[..k]);
        for &b in &buf[..k] {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        left -= k;
    }
    h
}

/// Echoes through a held connection; false if it is broken.
pub async fn still_echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut b = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await,
        Ok(Ok(_))
    ) && &b == b"ping"
}

/// Reads the `name\n` tag a `TaggedEcho` backend sends first; `None` if the
/// proxy closed the connection instead (bounded by `limit`).
pub async fn read_tag(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut tag = Vec::new();
    let mut b = [0u8; 1];
    let read = async {
        loop {
            match s.read(&mut b).await {
                Ok(1) if b[0] == b'\n' => return Some(String::from_utf8_lossy(&tag).into_owned()),
                Ok(1) => tag.push(b[0]),
                _ => return None,
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

/// Connects through the proxy and returns the serving backend's tag.
pub async fn tag_of_new_client(proxy: &Proxy) -> (TcpStream, Option<String>) {
    let mut s = proxy.connect().await;
    let tag = read_tag(&mut s, Duration::from_secs(10)).await;
    (s, tag)
}

/// True when the peer closed `s` (EOF or reset) within `limit`.
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// `proxy.backends.static` with these entries.
pub fn statics(lines: &[String]) -> String {
    format!("  backends:\n    static:\n{}", lines.concat())
}

/// Where a publisher pushes `key` through the proxy (app `stream`).
pub fn url(addr: SocketAddr, key: &str) -> String {
    format!("rtmp://{addr}/stream/{key}")
}

/// `/streams` as JSON.
pub async fn streams(proxy: &Proxy) -> Vec<serde_json::Value> {
    let (status, body) = http_get(proxy.admin, "/streams")
        .await
        .expect("GET /streams");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("/streams is JSON")
}

/// C0+C1.
pub const RTMP_C0C1_LEN: usize = 1537;

/// What ffmpeg sends to publish "testkey123" to app "stream", up to and
/// including the publish command.
pub const FFMPEG_PUBLISH: &[u8] = include_bytes!("../../src/rtmp/testdata/ffmpeg_publish.bin");
pub const PUBLISH_END: usize = RTMP_C0C1_LEN + 1536 + 348;

/// [`FFMPEG_PUBLISH`] of another 10-character key: the same bytes with
/// the key replaced where ffmpeg names it (releaseStream, FCPublish,
/// publish), so every length stays as recorded.
pub fn ffmpeg_publish_of(key: &str) -> Vec<u8> {
    let recorded = b"testkey123";
    assert_eq!(
        key.len(),
        recorded.len(),
        "a key of {} bytes",
        recorded.len()
    );
    let mut bytes = FFMPEG_PUBLISH.to_vec();
    let mut i = 0;
    while let Some(at) = bytes[i..]
        .windows(recorded.len())
        .position(|w| w == recorded)
    {
        let at = i + at;
        bytes[at..at + recorded.len()].copy_from_slice(key.as_bytes());
        i = at + recorded.len();
    }
    bytes
}

/// An `onStatus` message, as a media server sends it.
pub fn on_status(level: &str, code: &str) -> Vec<u8> {
    let text = |s: &str| Value::String(s.into());
    let info = Value::Object(vec![
        ("level".into(), text(level)),
        ("code".into(), text(code)),
        ("description".into(), text("said by the test server")),
    ]);
    rtmp_command(
        5,
        1,
        &[text("onStatus"), Value::Number(0.0), Value::Null, info],
    )
}

/// A command message (AMF0) on chunk stream `csid`, message stream `msid`.
pub fn rtmp_command(csid: u32, msid: u32, values: &[Value]) -> Vec<u8> {
    let mut payload = Vec::new();
    rtmp_proxy::rtmp::amf0::encode(values, &mut payload);
    let header = rtmp_proxy::rtmp::rechunk::Header {
        csid,
        timestamp: 0,
        len: payload.len() as u32,
        msg_type: 20,
        msid,
    };
    let mut out = Vec::new();
    rtmp_proxy::rtmp::rechunk::ChunkWriter::default().message(&header, &payload, &mut out);
    out
}

/// A media server's side of one connection, as far as the proxy's front
/// needs it: answers the handshake, sends `answer` once the client's
/// commands through `publish` have arrived, then reads on.
pub async fn answer_publish(sock: &mut TcpStream, answer: &[u8]) -> std::io::Result<()> {
    let mut hello = vec![0u8; RTMP_C0C1_LEN];
    sock.read_exact(&mut hello).await?;
    sock.write_all(&rtmp_proxy::rtmp::handshake::answer(&hello))
        .await?;
    if read_until(sock, b"publish").await {
        sock.write_all(answer).await?;
        tokio::io::copy(sock, &mut tokio::io::sink()).await?;
    }
    Ok(())
}

/// A listener whose every connection is served by [`answer_publish`].
pub async fn rtmp_server_answering(answer: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move { answer_publish(&mut sock, &answer).await });
        }
    });
    addr
}

/// Reads until `needle` arrives; false on a close or after 10 s.
pub async fn read_until(sock: &mut TcpStream, needle: &[u8]) -> bool {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let found = async {
        loop {
            if got.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
            match sock.read(&mut chunk).await {
                Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => return got.windows(needle.len()).any(|w| w == needle),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), found)
        .await
        .unwrap_or(false)
}

/// Publishes through the proxy with ffmpeg's recorded bytes; true once
/// the proxy passed on the server's Publish.Start.
pub async fn publish_recorded(client: &mut TcpStream) -> bool {
    client
        .write_all(&FFMPEG_PUBLISH[..RTMP_C0C1_LEN])
        .await
        .unwrap();
    let mut answer = vec![0u8; RTMP_C0C1_LEN + 1536];
    if client.read_exact(&mut answer).await.is_err() {
        return false;
    }
    client
        .write_all(&FFMPEG_PUBLISH[RTMP_C0C1_LEN..PUBLISH_END])
        .await
        .unwrap();
    read_until(client, b"NetStream.Publish.Start").await
}

/// What a PROXY-aware test backend saw on one connection.
#[derive(Debug)]
pub struct Seen {
    pub version: &'static str,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// The client bytes that followed the header (C0+C1).
    pub c0c1: Vec<u8>,
}

/// A backend that parses a PROXY header (v1 or v2, with `ppp`), then reads
/// C0+C1 and answers the handshake, then starts any publish it is sent.
/// Connections that close without a header (health checks) are ignored.
pub async fn proxy_header_backend() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<Seen, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(seen) = read_proxied(sock).await {
                    let _ = tx.send(seen);
                }
            });
        }
    });
    (addr, rx)
}

pub fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

async fn read_proxied(mut sock: TcpStream) -> Option<Result<Seen, String>> {
    use ppp::{v1, v2, HeaderResult, PartialResult};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (version, source, destination, len) = loop {
        let parsed = HeaderResult::parse(&buf);
        if !parsed.is_incomplete() {
            break match parsed {
                HeaderResult::V1(Ok(h)) => match h.addresses {
                    v1::Addresses::Tcp4(a) => (
                        "v1",
                        SocketAddr::from((a.source_address, a.source_port)),
                        SocketAddr::from((a.destination_address, a.destination_port)),
                        h.header.len(),
                    ),
                    // A health check: no client behind it.
                    v1::Addresses::Unknown => {
                        ("check", unspecified(), unspecified(), h.header.len())
                    }
                    other => return Some(Err(format!("v1 addresses {other:?}"))),
                },
                HeaderResult::V2(Ok(h)) => match h.addresses {
                    v2::Addresses::IPv4(a) if h.command == v2::Command::Proxy => (
                        "v2",
                        SocketAddr::from((a.source_address, a.source_port)),
                        SocketAddr::from((a.destination_address, a.destination_port)),
                        h.header.len(),
                    ),
                    _ if h.command == v2::Command::Local => {
                        ("check", unspecified(), unspecified(), h.header.len())
                    }
                    other => return Some(Err(format!("v2 {:?} {other:?}", h.command))),
                },
                other => return Some(Err(format!("bad header {other:?} in {buf:?}"))),
            };
        }
        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => return None,
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => return Some(Err(format!("incomplete header {buf:?}: {other:?}"))),
        }
    };
    let mut hello = buf.split_off(len);
    while hello.len() < RTMP_C0C1_LEN {
        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => hello.extend_from_slice(&chunk[..n]),
            other => return Some(Err(format!("no C0+C1 after the header: {other:?}"))),
        }
    }
    let reply = rtmp_proxy::rtmp::handshake::answer(&hello[..RTMP_C0C1_LEN]);
    if let Err(e) = sock.write_all(&reply).await {
        return Some(Err(format!("cannot answer: {e}")));
    }
    // Answered like a server would, and not reported.
    if version == "check" {
        return None;
    }
    let seen = Seen {
        version,
        source,
        destination,
        c0c1: hello,
    };
    tokio::spawn(async move {
        // The proxy's C2, then the client's commands through its publish.
        if read_until(&mut sock, b"publish").await {
            let _ = sock
                .write_all(&on_status("status", "NetStream.Publish.Start"))
                .await;
            let _ = tokio::io::copy(&mut sock, &mut tokio::io::sink()).await;
        }
    });
    Some(Ok(seen))
}
