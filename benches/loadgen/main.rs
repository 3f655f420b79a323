//! Load client and tiny backends for `benches/run` (loopback only).
//!
//! ```text
//! loadgen echo      --listen ADDR            echo every byte back (backend)
//! loadgen sink      --listen ADDR            read and discard (backend)
//! loadgen rtmp-sink --listen ADDR            a minimal RTMP media server: handshake,
//!                                            Publish.Start after `publish`, then discard
//! loadgen cps     --target ADDR [--rtmp]     closed loop: connect, 64-byte echo (or an
//!                                            RTMP publish up to Publish.Start), close
//! loadgen latency --target ADDR              64-byte ping-pong on one connection
//! loadgen ingest  --target ADDR [--rtmp]     N paced publishers (2 Mbit/s each), after
//!                 [--tls]                    an RTMP publish with --rtmp; over TLS
//!                                            (RTMPS with --rtmp) with --tls
//! loadgen tput    --target ADDR [--rtmp]     one connection writing as fast as it can
//!                 [--tls]                    for N seconds (after a publish with
//!                                            --rtmp; over TLS with --tls): bytes/s
//! loadgen setup   --target ADDR --count N    sequential RTMP publishes: time from the
//!                                            TCP connect to NetStream.Publish.Start
//! loadgen idle    --target ADDR              N idle connections, in rounds driven on stdin
//! ```
//!
//! The RTMP client side replays the bytes a real ffmpeg sent when it
//! published (`src/rtmp/testdata/ffmpeg_publish.bin`): C0+C1, then, once
//! S0+S1+S2 are in, C2 and the commands up to and including
//! `publish("testkey123")` (app `stream`), the key replaced by one of
//! the same length unique to the connection (`k` + 3 characters random
//! per process + a 6-character count), as a fleet of encoders has a key
//! each: with one key for all, rtmp-proxy's `duplicate_publish` (takeover
//! by default) would close every publisher the next one replaces. Then it
//! reads until
//! `NetStream.Publish.Start` arrives. What follows (`ingest --rtmp`) is the
//! same paced filler as without `--rtmp`: `protocol: rtmp` copies client
//! bytes after the publish verbatim, whatever they are.
//!
//! `--tls` (benchmarks only) trusts whatever certificate the target shows:
//! the certificate chain is not checked, the handshake's signature is. The
//! client offers TLS 1.3 and 1.2 and only the X25519 key exchange (what
//! every peer supports, so no peer pays for a post-quantum hybrid that
//! another does not); it uses ring's cryptography.
//!
//! Every mode is bounded in time (`--seconds`, `--max-seconds`) and exits by
//! itself; results are one JSON object on stdout. Every socket is opened to
//! the given target, which must be a loopback address: anything else is
//! refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(about = "rtmp-proxy benchmark load client and backends (loopback only)")]
struct Cli {
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2, global = true)]
    threads: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Echo backend: writes back every byte it reads.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        /// Exit after this long whatever happens.
        #[arg(long, default_value_t = 1800)]
        max_seconds: u64,
    },
    /// Sink backend: reads and discards.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1800)]
        max_seconds: u64,
    },
    /// RTMP sink backend, a minimal media server: per connection (after a
    /// PROXY header, if one comes) reads C0+C1, writes S0+S1+S2 (S2 echoes
    /// C1), reads C2 and then until the bytes `publish` (at most 64 KiB),
    /// writes an `onStatus` NetStream.Publish.Start on message stream 1,
    /// then reads and discards until the client closes.
    RtmpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1800)]
        max_seconds: u64,
    },
    /// New connections per second: `concurrency` workers each connect, send
    /// `size` bytes, read them back and close. With several `--target`s the
    /// workers take turns at them in `slice_ms` slices (in a fresh random
    /// order each round), so every target
    /// sees the same machine (noise spreads evenly); `seconds` per target.
    Cps {
        #[arg(long, required = true)]
        target: Vec<SocketAddr>,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 100)]
        slice_ms: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// A connection is an RTMP publish instead of an echo: connect,
        /// handshake and commands up to NetStream.Publish.Start, close
        /// (the target must lead to an `rtmp-sink`).
        #[arg(long)]
        rtmp: bool,
    },
    /// Round trips of `size` bytes on one long-lived connection per
    /// `--target`; with several, one round trip to each in turn, so every
    /// target sees the same machine. `seconds` in all.
    Latency {
        #[arg(long, required = true)]
        target: Vec<SocketAddr>,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Stop after this many round trips per target even if time is left.
        #[arg(long, default_value_t = 1_000_000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Round trips made and not counted first.
        #[arg(long, default_value_t = 1000)]
        warmup: usize,
    },
    /// `conns` connections, each sending `mbps` Mbit/s as `fps` frames per
    /// second (like an RTMP publisher), for `seconds` once all are open.
    /// Prints `START` when every connection is open, then the JSON result.
    Ingest {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        #[arg(long, default_value_t = 2.0)]
        mbps: f64,
        #[arg(long, default_value_t = 25)]
        fps: u32,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Every publisher first publishes over RTMP (handshake and
        /// commands up to NetStream.Publish.Start) before its paced
        /// stream; `START` comes once all have (the target must lead to an
        /// `rtmp-sink`).
        #[arg(long)]
        rtmp: bool,
        /// Over TLS (the TLS handshake, too, before `START`).
        #[arg(long)]
        tls: bool,
    },
    /// Throughput: `conns` connections (after an RTMP publish with
    /// `--rtmp`, over TLS with `--tls`) each write `size`-byte buffers as
    /// fast as they can for `seconds`, then close their side and wait for
    /// the target to close (all bytes through to the backend, which closes
    /// once it has read them). Bytes / time to that close.
    Tput {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Bytes per write (iperf3's default for TCP: 128 KiB).
        #[arg(long, default_value_t = 128 * 1024)]
        size: usize,
        #[arg(long)]
        rtmp: bool,
        #[arg(long)]
        tls: bool,
    },
    /// Publish setup time: `count` RTMP publishes to each `--target`, one
    /// at a time (one to each target in turn), each timed from the start
    /// of its TCP connect to `NetStream.Publish.Start`, then closed.
    /// Prints per target the median, p90 and failures, in microseconds,
    /// and the median TCP connect time (one round trip).
    Setup {
        #[arg(long, required = true)]
        target: Vec<SocketAddr>,
        /// Measured publishes per target (at most 100,000).
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Publishes per target made first and not counted.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Pause after each publish, so one's teardown does not overlap
        /// the next one's setup.
        #[arg(long, default_value_t = 5)]
        pause_ms: u64,
        /// Stop after this long even if publishes are left.
        #[arg(long, default_value_t = 120.0)]
        seconds: f64,
    },
    /// Opens `conns` connections (each proven end to end by a 1-byte echo),
    /// prints `OPEN n`, waits for a line on stdin, closes them all, prints
    /// `CLOSED`, waits for a line, and so on for `rounds` rounds.
    Idle {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 5000)]
        conns: usize,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Longest wait for each stdin line.
        #[arg(long, default_value_t = 120)]
        wait_seconds: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.mode {
            Mode::Echo {
                listen,
                max_seconds,
            } => serve(listen, max_seconds, Backend::Echo).await,
            Mode::Sink {
                listen,
                max_seconds,
            } => serve(listen, max_seconds, Backend::Sink).await,
            Mode::RtmpSink {
                listen,
                max_seconds,
            } => serve(listen, max_seconds, Backend::RtmpSink).await,
            Mode::Cps {
                target,
                concurrency,
                seconds,
                slice_ms,
                size,
                rtmp,
            } => {
                let targets = target.into_iter().map(loopback).collect::<Result<_, _>>()?;
                cps(targets, concurrency, seconds, slice_ms, size, rtmp).await
            }
            Mode::Latency {
                target,
                seconds,
                count,
                size,
                warmup,
            } => {
                let targets = target.into_iter().map(loopback).collect::<Result<_, _>>()?;
                latency(targets, seconds, count, size, warmup).await
            }
            Mode::Ingest {
                target,
                conns,
                mbps,
                fps,
                seconds,
                rtmp,
                tls,
            } => {
                let tls = tls.then(tls_connector);
                ingest(loopback(target)?, conns, mbps, fps, seconds, rtmp, tls).await
            }
            Mode::Tput {
                target,
                conns,
                seconds,
                size,
                rtmp,
                tls,
            } => {
                let tls = tls.then(tls_connector);
                tput(
                    loopback(target)?,
                    conns.clamp(1, 64),
                    seconds,
                    size.clamp(1, 1 << 22),
                    rtmp,
                    tls,
                )
                .await
            }
            Mode::Setup {
                target,
                count,
                warmup,
                pause_ms,
                seconds,
            } => {
                let targets = target.into_iter().map(loopback).collect::<Result<_, _>>()?;
                setup(
                    targets,
                    count.min(100_000),
                    warmup.min(10_000),
                    pause_ms,
                    seconds,
                )
                .await
            }
            Mode::Idle {
                target,
                conns,
                rounds,
                wait_seconds,
            } => idle(loopback(target)?, conns, rounds, wait_seconds).await,
        }
    });
    // Leave lingering tasks behind rather than wait for them.
    rt.shutdown_timeout(Duration::from_millis(100));
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

type Res = Result<(), String>;

fn loopback(target: SocketAddr) -> Result<SocketAddr, String> {
    if target.ip().is_loopback() {
        Ok(target)
    } else {
        Err(format!("{target}: only loopback targets are allowed"))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Echo,
    Sink,
    RtmpSink,
}

/// Echo, sink or RTMP sink backend until `max_seconds`.
async fn serve(listen: SocketAddr, max_seconds: u64, kind: Backend) -> Res {
    // A deep accept queue: a proxy opening a thousand backend connections
    // at once must not overflow it (a dropped handshake costs the client a
    // retransmission, seconds later).
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("listen {listen}: {e}"))?;
    let listener = socket
        .set_reuseaddr(true)
        .and_then(|()| socket.bind(listen))
        .and_then(|()| socket.listen(4096))
        .map_err(|e| format!("listen {listen}: {e}"))?;
    let accept = async {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                // Out of descriptors, for instance: back off briefly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let echo = kind == Backend::Echo;
                if kind == Backend::RtmpSink && rtmp_sink_greet(&mut s).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; if echo { 16 * 1024 } else { 64 * 1024 }];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if echo && s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(max_seconds), accept).await;
    Ok(())
}

const OP_TIMEOUT: Duration = Duration::from_secs(5);

// ---- RTMP

/// What a real ffmpeg sent when it published (see
/// `src/rtmp/testdata/README.txt`).
const FFMPEG_PUBLISH: &[u8] = include_bytes!("../../src/rtmp/testdata/ffmpeg_publish.bin");
/// C0+C1.
const C0C1_LEN: usize = 1 + HANDSHAKE_LEN;
/// C1, S1, S2, C2.
const HANDSHAKE_LEN: usize = 1536;
/// S0+S1+S2.
const S0S1S2_LEN: usize = 1 + 2 * HANDSHAKE_LEN;
/// End of ffmpeg's `publish` command: its commands after C2 are 348 bytes.
const PUBLISH_END: usize = C0C1_LEN + HANDSHAKE_LEN + 348;
/// The server's answer that it took the stream. The proxy re-chunks the
/// server's messages at 128 bytes; this code sits in the first chunk.
const PUBLISH_START: &[u8] = b"NetStream.Publish.Start";
/// Most bytes read while looking for `publish` or `PUBLISH_START`.
const MAX_SEARCH: usize = 64 * 1024;
/// The RTMP sink's limit for a client to get to `publish`.
const SINK_GREET_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads until `needle` has gone by, at most `limit` bytes; returns the
/// bytes read. Bytes after the needle are read and dropped.
async fn read_until<S: AsyncRead + Unpin>(
    s: &mut S,
    needle: &[u8],
    limit: usize,
) -> Result<usize, String> {
    let keep = needle.len().saturating_sub(1);
    let mut window: Vec<u8> = Vec::with_capacity(keep + 4096);
    let mut buf = vec![0u8; 4096];
    let mut total = 0usize;
    while total < limit {
        let room = (limit - total).min(buf.len());
        let n = s
            .read(&mut buf[..room])
            .await
            .map_err(|e| format!("after {total} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {total} bytes"));
        }
        total += n;
        window.extend_from_slice(&buf[..n]);
        if window.windows(needle.len()).any(|w| w == needle) {
            return Ok(total);
        }
        // Only a needle split across reads needs what came before.
        let cut = window.len().saturating_sub(keep);
        window.drain(..cut);
    }
    Err(format!("not within {limit} bytes"))
}

/// The client side of an RTMP publish on a connected socket: ffmpeg's
/// C0+C1, S0+S1+S2 read, ffmpeg's C2 and commands up to `publish`, then
/// until the server's (or proxy's) `NetStream.Publish.Start`.
/// ffmpeg's key in `FFMPEG_PUBLISH` (in releaseStream, FCPublish and
/// publish, each within one chunk).
const FFMPEG_KEY: &[u8] = b"testkey123";

/// `FFMPEG_PUBLISH` up to `publish`, with a key of its own (see the top).
fn publish_bytes() -> Vec<u8> {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    static PREFIX: std::sync::OnceLock<[u8; 3]> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| std::array::from_fn(|_| DIGITS[fastrand::usize(..36)]));
    let mut n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut key = [0u8; 10];
    key[0] = b'k';
    key[1..4].copy_from_slice(prefix);
    for b in key[4..].iter_mut().rev() {
        *b = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    let mut bytes = FFMPEG_PUBLISH[..PUBLISH_END].to_vec();
    let mut found = 0;
    let mut i = C0C1_LEN + HANDSHAKE_LEN;
    while i + FFMPEG_KEY.len() <= bytes.len() {
        if &bytes[i..i + FFMPEG_KEY.len()] == FFMPEG_KEY {
            bytes[i..i + FFMPEG_KEY.len()].copy_from_slice(&key);
            found += 1;
            i += FFMPEG_KEY.len();
        } else {
            i += 1;
        }
    }
    assert_eq!(found, 3, "ffmpeg_publish.bin: the key three times");
    bytes
}

async fn rtmp_publish<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<(), String> {
    let publish = publish_bytes();
    let talk = async {
        // Flushed: over TLS a written record may wait in the session.
        s.write_all(&publish[..C0C1_LEN])
            .await
            .map_err(|e| format!("writing C0+C1: {e}"))?;
        s.flush().await.map_err(|e| format!("writing C0+C1: {e}"))?;
        let mut answer = vec![0u8; S0S1S2_LEN];
        s.read_exact(&mut answer)
            .await
            .map_err(|e| format!("reading S0+S1+S2: {e}"))?;
        if answer[0] != 3 {
            return Err(format!("S0: version {}, not 3", answer[0]));
        }
        s.write_all(&publish[C0C1_LEN..])
            .await
            .map_err(|e| format!("writing C2 and commands: {e}"))?;
        s.flush()
            .await
            .map_err(|e| format!("writing C2 and commands: {e}"))?;
        read_until(s, PUBLISH_START, MAX_SEARCH)
            .await
            .map_err(|e| format!("no NetStream.Publish.Start: {e}"))?;
        Ok(())
    };
    tokio::time::timeout(OP_TIMEOUT, talk)
        .await
        .map_err(|_| "RTMP publish timeout".to_string())?
}

/// One AMF0 string.
fn amf0_string(out: &mut Vec<u8>, s: &str) {
    out.push(0x02);
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// `onStatus(0, null, {level: "status", code: "NetStream.Publish.Start",
/// description})` as one AMF0 command message (type 20) on chunk stream 5,
/// message stream 1, in chunks of 128 bytes (the default chunk size).
fn publish_start_message() -> Vec<u8> {
    let mut p = Vec::with_capacity(128);
    amf0_string(&mut p, "onStatus");
    p.push(0x00); // number
    p.extend_from_slice(&0f64.to_be_bytes());
    p.push(0x05); // null
    p.push(0x03); // object
    for (k, v) in [
        ("level", "status"),
        ("code", "NetStream.Publish.Start"),
        ("description", "Start publishing"),
    ] {
        p.extend_from_slice(&(k.len() as u16).to_be_bytes());
        p.extend_from_slice(k.as_bytes());
        amf0_string(&mut p, v);
    }
    p.extend_from_slice(&[0x00, 0x00, 0x09]); // object end
                                              // Type-0 chunk header: fmt 0, csid 5; timestamp 0; length; type 20;
                                              // message stream id 1 (little-endian).
    let mut m = vec![0x05, 0, 0, 0];
    m.extend_from_slice(&(p.len() as u32).to_be_bytes()[1..]);
    m.push(20);
    m.extend_from_slice(&1u32.to_le_bytes());
    for (i, chunk) in p.chunks(128).enumerate() {
        if i > 0 {
            m.push(0xC5); // fmt 3, csid 5: a continuation
        }
        m.extend_from_slice(chunk);
    }
    m
}

/// Skips a PROXY protocol header (v1 or v2) if the connection starts with
/// one; the benches send none.
async fn skip_proxy_header(s: &mut TcpStream) -> Result<(), String> {
    let mut first = [0u8; 1];
    if s.peek(&mut first).await.map_err(|e| e.to_string())? == 0 {
        return Err("closed".into());
    }
    match first[0] {
        b'P' => {
            // v1: text up to CRLF, at most 107 bytes.
            let mut line = Vec::with_capacity(108);
            let mut b = [0u8; 1];
            while line.len() < 108 && !line.ends_with(b"\r\n") {
                s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
                line.push(b[0]);
            }
            if !line.ends_with(b"\r\n") {
                return Err("PROXY v1 header too long".into());
            }
        }
        0x0D => {
            // v2: 12-byte signature, version/command, family, 2-byte length.
            let mut head = [0u8; 16];
            s.read_exact(&mut head).await.map_err(|e| e.to_string())?;
            let len = u16::from_be_bytes([head[14], head[15]]) as usize;
            let mut rest = vec![0u8; len];
            s.read_exact(&mut rest).await.map_err(|e| e.to_string())?;
        }
        _ => {}
    }
    Ok(())
}

/// `rtmp-sink`: the media server's side of a publish, up to its
/// NetStream.Publish.Start.
async fn rtmp_sink_greet(s: &mut TcpStream) -> Result<(), String> {
    static MESSAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let talk = async {
        skip_proxy_header(s).await?;
        let mut c0c1 = vec![0u8; C0C1_LEN];
        s.read_exact(&mut c0c1).await.map_err(|e| e.to_string())?;
        if c0c1[0] != 3 {
            return Err(format!("C0: version {}", c0c1[0]));
        }
        // S0, S1 (time 0, zeros), S2 = C1 echoed.
        let mut answer = Vec::with_capacity(S0S1S2_LEN);
        answer.push(3);
        answer.resize(C0C1_LEN, 0);
        answer.extend_from_slice(&c0c1[1..]);
        s.write_all(&answer).await.map_err(|e| e.to_string())?;
        // C2 (a health check closes before it), then the commands.
        let mut c2 = vec![0u8; HANDSHAKE_LEN];
        s.read_exact(&mut c2).await.map_err(|e| e.to_string())?;
        read_until(s, b"publish", MAX_SEARCH).await?;
        let message = MESSAGE.get_or_init(publish_start_message);
        s.write_all(message).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(SINK_GREET_TIMEOUT, talk)
        .await
        .map_err(|_| "timeout".to_string())?
}

async fn connect(target: SocketAddr) -> Result<TcpStream, String> {
    let s = tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// One `cps --rtmp` connection: connect, publish, close.
async fn one_rtmp(target: SocketAddr) -> Result<(), String> {
    let mut s = connect(target).await?;
    rtmp_publish(&mut s).await
}

/// Publish setup times, sequential, one target after the other in turn.
async fn setup(
    targets: Vec<SocketAddr>,
    count: usize,
    warmup: usize,
    pause_ms: u64,
    seconds: f64,
) -> Res {
    let n = targets.len();
    let mut total: Vec<Vec<u32>> = vec![Vec::with_capacity(count); n];
    let mut connect_us: Vec<Vec<u32>> = vec![Vec::with_capacity(count); n];
    let mut failures = vec![0u64; n];
    let mut first_error: Vec<Option<String>> = vec![None; n];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let pause = Duration::from_millis(pause_ms);
    let mut i = 0usize;
    while i < warmup + count && Instant::now() < deadline {
        for j in 0..n {
            // Alternate the order, so no target always follows another.
            let k = if i.is_multiple_of(2) { j } else { n - 1 - j };
            let t0 = Instant::now();
            let result = async {
                let mut s = connect(targets[k]).await?;
                let connected = t0.elapsed();
                rtmp_publish(&mut s).await?;
                let done = t0.elapsed();
                drop(s);
                Ok::<_, String>((connected, done))
            }
            .await;
            match result {
                Ok((connected, done)) if i >= warmup => {
                    connect_us[k].push(connected.as_micros().min(u32::MAX as u128) as u32);
                    total[k].push(done.as_micros().min(u32::MAX as u128) as u32);
                }
                Ok(_) => {}
                Err(e) => {
                    failures[k] += 1;
                    first_error[k].get_or_insert(e);
                }
            }
            tokio::time::sleep(pause).await;
        }
        i += 1;
    }
    let q = |v: &[u32], p: f64| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
        Some(v[idx] as f64)
    };
    let mut per = serde_json::Map::new();
    for k in 0..n {
        total[k].sort_unstable();
        connect_us[k].sort_unstable();
        let v = &total[k];
        per.insert(
            targets[k].to_string(),
            json!({
                "n": v.len(),
                "failures": failures[k],
                "first_error": first_error[k],
                "median_us": q(v, 0.5),
                "p90_us": q(v, 0.9),
                "min_us": q(v, 0.0),
                "max_us": q(v, 1.0),
                "connect_median_us": q(&connect_us[k], 0.5),
            }),
        );
    }
    println!("{}", json!({"mode": "setup", "targets": per}));
    Ok(())
}

async fn one_echo(target: SocketAddr, payload: &[u8], back: &mut [u8]) -> Result<(), String> {
    let mut s = tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    tokio::time::timeout(OP_TIMEOUT, async {
        s.write_all(payload).await?;
        s.read_exact(back).await?;
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|_| "echo timeout".to_string())?
    .map_err(|e| e.to_string())?;
    if back != payload {
        return Err("echo mismatch".into());
    }
    Ok(())
}

async fn cps(
    targets: Vec<SocketAddr>,
    concurrency: usize,
    seconds: f64,
    slice_ms: u64,
    size: usize,
    rtmp: bool,
) -> Res {
    let n = targets.len();
    let ok: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let errors: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let current = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let targets = Arc::new(targets);
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (ok, errors, first_error) = (ok.clone(), errors.clone(), first_error.clone());
        let (current, stop, targets) = (current.clone(), stop.clone(), targets.clone());
        workers.push(tokio::spawn(async move {
            let payload: Vec<u8> = (0..size).map(|i| (i + w) as u8).collect();
            let mut back = vec![0u8; size];
            while !stop.load(Ordering::Relaxed) {
                let k = current.load(Ordering::Relaxed);
                let done = if rtmp {
                    one_rtmp(targets[k]).await
                } else {
                    one_echo(targets[k], &payload, &mut back).await
                };
                match done {
                    Ok(()) => {
                        ok[k].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors[k].fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap()
                            .get_or_insert(format!("{}: {e}", targets[k]));
                        // Don't spin on a refused port.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    // Turns: every target gets `seconds` in `slice_ms` slices, in rotation.
    let slice = Duration::from_millis(slice_ms.max(10));
    let slices = ((seconds * 1000.0) / slice.as_millis() as f64)
        .ceil()
        .max(1.0) as usize;
    // A fresh order every round: a target's first connections pay for
    // what the target before it left in the kernel (sockets closing, in
    // TIME_WAIT), so in a fixed order one target would always follow the
    // same neighbour. Seeded: every run takes the same turns.
    let mut rng = fastrand::Rng::with_seed(1935);
    let mut order: Vec<usize> = (0..n).collect();
    let mut time_on = vec![0f64; n];
    for _ in 0..slices {
        rng.shuffle(&mut order);
        for &k in &order {
            current.store(k, Ordering::Relaxed);
            let t0 = Instant::now();
            tokio::time::sleep(slice).await;
            time_on[k] += t0.elapsed().as_secs_f64();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let per: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|k| {
            let done = ok[k].load(Ordering::Relaxed);
            (
                targets[k].to_string(),
                json!({
                    "ok": done,
                    "errors": errors[k].load(Ordering::Relaxed),
                    "seconds": time_on[k],
                    "cps": done as f64 / time_on[k],
                }),
            )
        })
        .collect();
    let out = json!({
        "mode": "cps",
        "rtmp": rtmp,
        "first_error": *first_error.lock().unwrap(),
        "targets": per,
    });
    println!("{out}");
    Ok(())
}

async fn latency(
    targets: Vec<SocketAddr>,
    seconds: f64,
    count: usize,
    size: usize,
    warmup: usize,
) -> Res {
    let mut conns = Vec::with_capacity(targets.len());
    for t in &targets {
        let s = TcpStream::connect(t)
            .await
            .map_err(|e| format!("connect {t}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        conns.push(s);
    }
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut back = vec![0u8; size];
    let mut samples: Vec<Vec<u32>> = vec![Vec::with_capacity(count.min(1_000_000)); targets.len()];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut i = 0usize;
    while i < warmup + count && Instant::now() < deadline {
        // Alternate the order too, so no target always follows another.
        let n = conns.len();
        for j in 0..n {
            let k = if i.is_multiple_of(2) { j } else { n - 1 - j };
            let s = &mut conns[k];
            let t = Instant::now();
            tokio::time::timeout(OP_TIMEOUT, async {
                s.write_all(&payload).await?;
                s.read_exact(&mut back).await?;
                Ok::<_, std::io::Error>(())
            })
            .await
            .map_err(|_| format!("{}: round trip timeout", targets[k]))?
            .map_err(|e| format!("{}: {e}", targets[k]))?;
            let ns = t.elapsed().as_nanos().min(u32::MAX as u128) as u32;
            if back != payload {
                return Err(format!("{}: echo mismatch", targets[k]));
            }
            if i >= warmup {
                samples[k].push(ns);
            }
        }
        i += 1;
    }
    let mut per = serde_json::Map::new();
    for (k, mut v) in samples.into_iter().enumerate() {
        if v.is_empty() {
            return Err(format!("{}: no round trip measured", targets[k]));
        }
        v.sort_unstable();
        let q = |p: f64| {
            let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
            v[idx] as f64 / 1000.0
        };
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 / 1000.0;
        per.insert(
            targets[k].to_string(),
            json!({
                "n": v.len(),
                "p50_us": q(0.50),
                "p90_us": q(0.90),
                "p99_us": q(0.99),
                "p999_us": q(0.999),
                "mean_us": mean,
            }),
        );
    }
    println!("{}", json!({"mode": "latency", "targets": per}));
    Ok(())
}

/// What proves a new connection is through to the backend.
#[derive(Clone, Copy, PartialEq)]
enum Prove {
    /// Nothing: open once connected.
    Nothing,
    /// A 1-byte echo.
    Echo,
    /// An RTMP publish up to NetStream.Publish.Start.
    RtmpPublish,
}

/// A client connection: plain TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

/// What a `--tls` client negotiated (first connection), for the report.
static TLS_INFO: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Trusts any certificate (benchmarks only): the chain is not checked, the
/// handshake signature is, with the provider's algorithms, so the server
/// does all the work it does for a real client.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The `--tls` client: TLS 1.3 or 1.2, X25519 only, any certificate.
fn tls_connector() -> TlsConnector {
    // ring's provider is deprecated for lacking post-quantum groups: this
    // client offers X25519 alone anyway.
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    let provider = Arc::new(provider);
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Connects (and with `tls`, does the TLS handshake, within OP_TIMEOUT).
async fn connect_conn(target: SocketAddr, tls: Option<&TlsConnector>) -> Result<Conn, String> {
    let s = connect(target).await?;
    let Some(tls) = tls else {
        return Ok(Box::new(s));
    };
    // An IP address as the name: no SNI is sent.
    let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
    let t = tokio::time::timeout(OP_TIMEOUT, tls.connect(name, s))
        .await
        .map_err(|_| "TLS handshake timeout".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    TLS_INFO.get_or_init(|| {
        let c = t.get_ref().1;
        let show = |v: Option<String>| v.unwrap_or_else(|| "?".into());
        format!(
            "{} {} {}",
            show(c.protocol_version().map(|v| format!("{v:?}"))),
            show(
                c.negotiated_cipher_suite()
                    .map(|v| format!("{:?}", v.suite()))
            ),
            show(
                c.negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name()))
            ),
        )
    });
    Ok(Box::new(t))
}

/// Opens `n` connections, at most `parallel` connects in flight.
async fn open_many(
    target: SocketAddr,
    n: usize,
    parallel: usize,
    prove: Prove,
    tls: Option<TlsConnector>,
) -> (Vec<Conn>, usize, Option<String>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let sem = sem.clone();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let mut s = connect_conn(target, tls.as_ref()).await?;
            if prove == Prove::RtmpPublish {
                rtmp_publish(&mut s).await?;
            }
            if prove == Prove::Echo {
                // One byte there and back: the proxy has reached the backend.
                let mut b = [0u8; 1];
                tokio::time::timeout(OP_TIMEOUT, async {
                    s.write_all(b"x").await?;
                    s.flush().await?;
                    s.read_exact(&mut b).await
                })
                .await
                .map_err(|_| "echo timeout".to_string())?
                .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(s)
        }));
    }
    let mut open = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => open.push(s),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    (open, failed, first_error)
}

/// `tput`: writes as fast as the connection takes them for `seconds`, then
/// closes its side and waits (at most 10 s) for the target's close.
async fn tput(
    target: SocketAddr,
    conns: usize,
    seconds: f64,
    size: usize,
    rtmp: bool,
    tls: Option<TlsConnector>,
) -> Res {
    let prove = if rtmp {
        Prove::RtmpPublish
    } else {
        Prove::Nothing
    };
    let is_tls = tls.is_some();
    let (streams, failed, first_error) = open_many(target, conns, conns, prove, tls).await;
    if failed > 0 || streams.is_empty() {
        return Err(format!(
            "{failed} of {conns} connections failed: {}",
            first_error.unwrap_or_default()
        ));
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(streams.len());
    for mut s in streams {
        tasks.push(tokio::spawn(async move {
            let data = vec![0x5au8; size];
            let mut sent = 0u64;
            while Instant::now() < end {
                tokio::time::timeout(OP_TIMEOUT, s.write_all(&data))
                    .await
                    .map_err(|_| "write timeout".to_string())?
                    .map_err(|e| format!("write: {e}"))?;
                sent += size as u64;
            }
            let written = start.elapsed();
            // FIN (after TLS's close_notify); the backend reads what is
            // left, sees the end, closes, and the target closes us.
            let closed = tokio::time::timeout(Duration::from_secs(10), async {
                s.shutdown().await?;
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return Ok::<_, std::io::Error>(()),
                        Ok(_) => {}
                    }
                }
            })
            .await
            .is_ok_and(|r| r.is_ok());
            Ok::<_, String>((sent, written, closed.then(|| start.elapsed())))
        }));
    }
    let (mut bytes, mut written, mut closed, mut all_closed) = (0u64, 0f64, 0f64, true);
    for t in tasks {
        let (sent, w, c) = t.await.map_err(|e| e.to_string())??;
        bytes += sent;
        written = f64::max(written, w.as_secs_f64());
        match c {
            Some(c) => closed = f64::max(closed, c.as_secs_f64()),
            None => all_closed = false,
        }
    }
    // Bytes over the time until the target closed (everything through),
    // or until the last write if it never did.
    let secs = if all_closed { closed } else { written };
    println!(
        "{}",
        json!({
            "mode": "tput",
            "rtmp": rtmp,
            "tls": is_tls.then(|| TLS_INFO.get().cloned()).flatten(),
            "conns": conns,
            "bytes": bytes,
            "write_seconds": written,
            "closed_seconds": all_closed.then_some(closed),
            "gbit_per_s": bytes as f64 * 8.0 / secs / 1e9,
        })
    );
    Ok(())
}

async fn ingest(
    target: SocketAddr,
    conns: usize,
    mbps: f64,
    fps: u32,
    seconds: f64,
    rtmp: bool,
    tls: Option<TlsConnector>,
) -> Res {
    let prove = if rtmp {
        Prove::RtmpPublish
    } else {
        Prove::Nothing
    };
    let is_tls = tls.is_some();
    let (streams, failed, first_error) = open_many(target, conns, 128, prove, tls).await;
    if streams.is_empty() {
        return Err(format!(
            "no connection opened: {}",
            first_error.unwrap_or_default()
        ));
    }
    let frame = ((mbps * 1e6 / 8.0) / fps as f64).round() as usize;
    let period = Duration::from_secs_f64(1.0 / fps as f64);
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let opened = streams.len();
    println!("START {opened}");
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(opened);
    for (i, mut s) in streams.into_iter().enumerate() {
        let (sent, errors, stop) = (sent.clone(), errors.clone(), stop.clone());
        // Spread the publishers' frame times over one period.
        let offset = period.mul_f64(i as f64 / opened as f64);
        tasks.push(tokio::spawn(async move {
            let data = vec![0x5au8; frame];
            let mut next = start + offset;
            while next < end && !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                // Flushed: over TLS the last record may wait in the session.
                let write = async {
                    s.write_all(&data).await?;
                    s.flush().await
                };
                match tokio::time::timeout(OP_TIMEOUT, write).await {
                    Ok(Ok(())) => {
                        sent.fetch_add(frame as u64, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                // A late frame goes out at once; the rate holds on average.
                next += period;
            }
            let _ = s.shutdown().await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = sent.load(Ordering::Relaxed);
    let expected = (mbps * 1e6 / 8.0) * seconds * opened as f64;
    let out = json!({
        "mode": "ingest",
        "rtmp": rtmp,
        "tls": is_tls.then(|| TLS_INFO.get().cloned()).flatten(),
        "conns": opened,
        "failed_to_open": failed,
        "first_error": first_error,
        "write_errors": errors.load(Ordering::Relaxed),
        "bytes": bytes,
        "seconds": elapsed,
        "mbit_per_s": bytes as f64 * 8.0 / elapsed / 1e6,
        "offered_fraction": bytes as f64 / expected,
    });
    println!("{out}");
    Ok(())
}

async fn idle(target: SocketAddr, conns: usize, rounds: usize, wait_seconds: u64) -> Res {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let wait = Duration::from_secs(wait_seconds);
    let mut report = Vec::new();
    for round in 0..rounds {
        let t = Instant::now();
        let (streams, failed, first_error) = open_many(target, conns, 256, Prove::Echo, None).await;
        println!("OPEN {} {failed}", streams.len());
        report.push(json!({
            "round": round,
            "open": streams.len(),
            "failed": failed,
            "first_error": first_error,
            "open_seconds": t.elapsed().as_secs_f64(),
        }));
        // Hold until told (or the wait runs out), then close them all.
        let _ = tokio::time::timeout(wait, stdin.next_line()).await;
        drop(streams);
        println!("CLOSED");
        if round + 1 < rounds {
            let _ = tokio::time::timeout(wait, stdin.next_line()).await;
        }
    }
    println!("{}", json!({"mode": "idle", "rounds": report}));
    Ok(())
}
