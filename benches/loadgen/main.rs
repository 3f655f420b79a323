//! Load client and tiny backends for `benches/run` (loopback only).
//!
//! ```text
//! loadgen echo    --listen ADDR              echo every byte back (backend)
//! loadgen sink    --listen ADDR              read and discard (backend)
//! loadgen cps     --target ADDR              closed loop: connect, 64-byte echo, close
//! loadgen latency --target ADDR              64-byte ping-pong on one connection
//! loadgen ingest  --target ADDR              N paced publishers (2 Mbit/s each)
//! loadgen idle    --target ADDR              N idle connections, in rounds driven on stdin
//! ```
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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

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
            } => serve(listen, max_seconds, true).await,
            Mode::Sink {
                listen,
                max_seconds,
            } => serve(listen, max_seconds, false).await,
            Mode::Cps {
                target,
                concurrency,
                seconds,
                slice_ms,
                size,
            } => {
                let targets = target.into_iter().map(loopback).collect::<Result<_, _>>()?;
                cps(targets, concurrency, seconds, slice_ms, size).await
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
            } => ingest(loopback(target)?, conns, mbps, fps, seconds).await,
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

/// Echo or sink backend until `max_seconds`.
async fn serve(listen: SocketAddr, max_seconds: u64, echo: bool) -> Res {
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
                match one_echo(targets[k], &payload, &mut back).await {
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
            let k = if i % 2 == 0 { j } else { n - 1 - j };
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

/// Opens `n` connections, at most `parallel` connects in flight.
async fn open_many(
    target: SocketAddr,
    n: usize,
    parallel: usize,
    prove: bool,
) -> (Vec<TcpStream>, usize, Option<String>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let mut s = tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(target))
                .await
                .map_err(|_| "connect timeout".to_string())?
                .map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            if prove {
                // One byte there and back: the proxy has reached the backend.
                let mut b = [0u8; 1];
                tokio::time::timeout(OP_TIMEOUT, async {
                    s.write_all(b"x").await?;
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

async fn ingest(target: SocketAddr, conns: usize, mbps: f64, fps: u32, seconds: f64) -> Res {
    let (streams, failed, first_error) = open_many(target, conns, 128, false).await;
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
                match tokio::time::timeout(OP_TIMEOUT, s.write_all(&data)).await {
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
        let (streams, failed, first_error) = open_many(target, conns, 256, true).await;
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
