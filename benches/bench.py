#!/usr/bin/env python3
"""rtmp-proxy against HAProxy and nginx, on loopback: see benches/run.

Started by benches/run (which installs the peers and builds the binaries).
Every peer runs in the foreground as a child of this script, on its own
port, in front of the same backends (for connections/s and latency, each
in front of an echo backend of its own); every load is bounded in time; every
process started here is stopped here (by its own id), whatever happens.

Figures, each for direct (no proxy), rtmp-proxy (`protocol: tcp`), HAProxy
(tcp), HAProxy with `option splice-auto`, and nginx `stream`:

  tput1 / tput8   iperf3 throughput, 1 and 8 streams (Gbit/s)
  cps             closed-loop new connections per second (connect, 64-byte
                  echo, close)
  lat             64-byte ping-pong round trips on one long-lived connection,
                  p50 / p99, and the latency a proxy adds (proxy - direct)
  ingest          1,000 publishers x 2 Mbit/s for 30 s: the proxy's CPU
                  seconds and peak RSS
  idle            RSS growth per idle proxied connection (5,000; second
                  round = steady state, first round = from a fresh process)
  setup           RTMP publish setup time, TCP connect to
                  NetStream.Publish.Start (median, p90), each target in front
                  of a `loadgen rtmp-sink`, and what a proxy adds to direct

Target rtmp-proxy-rtmp is rtmp-proxy with `protocol: rtmp` (the RTMP front) in
front of `loadgen rtmp-sink` backends. It takes part in `ingest` (publishers
do an RTMP publish first: `loadgen ingest --rtmp`), `setup`, and in `cps` as
a second round in which a connection is an RTMP publish (`loadgen cps
--rtmp`: handshake and commands up to NetStream.Publish.Start, close) for
every target, each in front of an rtmp-sink of its own (figure cps_rtmp).
The other figures (tput, lat, idle, burst) proxy raw bytes and skip it.

RTMPS: target rtmp-proxy-rtmps is rtmp-proxy in rtmp mode with a `proxy.tls`
listener (TLS ends in the proxy), haproxy-ssl is HAProxy `mode tcp` with
`bind ... ssl crt` (the same certificate, made with openssl at run time in
the work directory), both in front of a `loadgen rtmp-sink`; their clients
speak TLS (`loadgen --tls`). They take part in `ingest` (publishers over
TLS) and in `push`:

  push            `loadgen tput`: one connection, an RTMP publish, then
                  128 KiB writes as fast as they go for a few seconds
                  (Gbit/s), over TLS for the TLS targets; every target in
                  front of an rtmp-sink of its own, in rotation as tput.
                  iperf3 cannot speak TLS: this is the same-tool figure for
                  RTMPS against plain.

Results are ratios to HAProxy measured in the same run: the machine is
shared and absolute figures drift. For throughput, connections/s and
latency all targets run at once and the load takes turns between them
(interleaved), so background noise falls on every target alike.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
PROXY_BIN = os.path.join(TARGET_DIR, "release", "rtmp-proxy")
LOADGEN_BIN = os.path.join(TARGET_DIR, "release", "loadgen")
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

PROXIES = ["rtmp-proxy", "rtmp-proxy-rtmp", "rtmp-proxy-rtmps", "haproxy", "haproxy-splice", "haproxy-ssl", "nginx"]
ALL_TARGETS = ["direct"] + PROXIES
# Targets that need RTMP clients and backends: only in ingest, setup, cps_rtmp
# and push.
RTMP_ONLY = {"rtmp-proxy-rtmp"}
# Targets whose clients speak TLS (to an rtmp-sink behind): only in ingest and push.
TLS_TARGETS = {"rtmp-proxy-rtmps", "haproxy-ssl"}
LABEL = {
    "direct": "direct",
    "rtmp-proxy-base": "rtmp-proxy (baseline build)",
    "rtmp-proxy": "rtmp-proxy",
    "rtmp-proxy-rtmp": "rtmp-proxy, protocol: rtmp",
    "rtmp-proxy-rtmps": "rtmp-proxy, RTMPS (proxy.tls)",
    "haproxy": "HAProxy",
    "haproxy-splice": "HAProxy splice",
    "haproxy-ssl": "HAProxy ssl",
    "nginx": "nginx",
}
FIGURES = ["tput", "cps", "lat", "ingest", "idle", "burst", "setup", "push"]

FULL = dict(
    tput_iters=5,
    tput_seconds=3,
    cps_seconds=10,
    cps_concurrency=32,
    lat_seconds=8,
    ingest_conns=1000,
    ingest_seconds=30,
    idle_conns=5000,
    burst_conns=1000,
    burst_settle=60,
    setup_count=200,
    setup_warmup=10,
    deadline=28 * 60,
)
SMOKE = dict(
    tput_iters=1,
    tput_seconds=1,
    cps_seconds=1,
    cps_concurrency=8,
    lat_seconds=1,
    ingest_conns=50,
    burst_conns=50,
    burst_settle=2,
    ingest_seconds=2,
    idle_conns=200,
    setup_count=20,
    setup_warmup=2,
    deadline=6 * 60,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def raw_targets(targets):
    """The targets of the figures that proxy raw bytes (not RTMP)."""
    return [t for t in targets if t not in RTMP_ONLY and t not in TLS_TARGETS]


def plain_targets(targets):
    """The targets plain-TCP clients reach (all but the TLS ones)."""
    return [t for t in targets if t not in TLS_TARGETS]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Deadline(Exception):
    pass


# --------------------------------------------------------------------------
# processes


class Procs:
    """Every process this run started; stop_all() ends them by id."""

    def __init__(self, workdir, deadline):
        self.workdir = workdir
        self.live = []
        self.deadline = deadline

    def check_time(self):
        if time.monotonic() > self.deadline:
            raise Deadline("the run's time limit was reached")

    def start(self, name, cmd, stdin=None, stdout=None, env=None):
        logf = open(os.path.join(self.workdir, f"{name}.log"), "ab")
        p = subprocess.Popen(
            cmd,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else logf,
            stderr=logf,
            start_new_session=True,  # its own process group, so its children stop with it
            env=env,
        )
        p.name = name
        p.logf = logf
        self.live.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, wait=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        # Children (nginx workers) may outlive their parent for a moment.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.logf.close()
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in list(self.live):
            self.stop(p, wait=2.0)


def tree(pid):
    """pid and its descendants (nginx: master and workers)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def status_kib(pids, key):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def listening(port):
    """Is something listening on 127.0.0.1:port? (no connection made)"""
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def wait_listen(port, p, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if p.poll() is not None:
            raise RuntimeError(f"{p.name} exited ({p.returncode}) before listening on {port}")
        if listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{p.name} did not listen on {port} within {timeout}s")


# --------------------------------------------------------------------------
# peers


class Bench:
    def __init__(self, args, cfg):
        self.args = args
        self.cfg = cfg
        self.base = args.port_base
        self.workdir = args.workdir
        os.makedirs(self.workdir, exist_ok=True)
        self.procs = Procs(self.workdir, time.monotonic() + cfg["deadline"])
        # Backends keep their ports; every proxy start takes fresh ones
        # (a stopped peer's port can stay busy with closing connections).
        self.port = {"echo": self.base + 1, "sink": self.base + 2, "iperf": self.base + 3, "rtmp-sink": self.base + 4}
        self.next_port = self.base + 10
        # Descriptors: each proxied connection takes two in the proxy.
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # HAProxy with splice also keeps pipes (maxconn / 4, two descriptors each).
        self.maxconn = max(1000, (self.nofile - 300) * 2 // 5)
        self.samples = {}  # (target, figure) -> [values]
        self.notes = []
        self.started_ok = set()
        self.tls_info = {}  # target -> what the TLS client negotiated

    def add(self, target, fig, value):
        if value is not None:
            self.samples.setdefault((target, fig), []).append(value)

    # ---- backends

    def start_backend(self, kind, port=None):
        port = port or self.port[kind]
        if kind == "iperf":
            p = self.procs.start("iperf3-server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)])
        else:
            p = self.procs.start(
                f"{kind}-backend",
                [LOADGEN_BIN, "--threads", "1", kind, "--listen", f"127.0.0.1:{port}", "--max-seconds", "1800"],
            )
        wait_listen(port, p)
        return p

    # ---- proxies

    def proxy_config_has_protocol(self):
        try:
            with open(os.path.join(ROOT, "src", "config.rs")) as f:
                return re.search(r"pub protocol\b", f.read()) is not None
        except OSError:
            return False

    def fresh_ports(self):
        """Four consecutive free ports (rtmp-proxy: proxy, health, admin, and
        the TLS listener of rtmp-proxy-rtmps)."""
        for _ in range(1000):
            port = self.next_port
            self.next_port += 4
            if self.next_port > self.base + 3000:
                self.next_port = self.base + 10
            if not any(listening(port + k) for k in range(4)):
                return port
        raise RuntimeError("no free ports")

    def certificate(self):
        """A self-signed ECDSA P-256 certificate for 127.0.0.1, made once per
        run in the work directory (never committed): (cert, key, cert+key
        for HAProxy's `crt`)."""
        d = os.path.join(self.workdir, "tls")
        cert, key, both = (os.path.join(d, n) for n in ("cert.pem", "key.pem", "haproxy.pem"))
        if not os.path.exists(both):
            os.makedirs(d, exist_ok=True)
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                 "-keyout", key, "-out", cert],
                check=True, capture_output=True, timeout=30)
            with open(both, "w") as f:
                for path in (cert, key):
                    with open(path) as part:
                        f.write(part.read())
        return cert, key, both

    def start_proxy(self, target, backend_port, max_connections=0):
        """Starts one peer in front of 127.0.0.1:backend_port; returns (proc, port).

        `max_connections` (rtmp-proxy only): the backend's cap, 0 = unlimited."""
        if target == "direct":
            return None, backend_port
        port = self.fresh_ports()
        d = os.path.join(self.workdir, target)
        os.makedirs(d, exist_ok=True)
        if target.startswith("rtmp-proxy"):
            conf = os.path.join(d, "rtmp-proxy.yaml")
            if target in ("rtmp-proxy-rtmp", "rtmp-proxy-rtmps"):
                # The RTMP front; generous for a thousand publishers at once.
                protocol = "  protocol: rtmp\n  handshake_timeout: 60s\n"
                if target == "rtmp-proxy-rtmps":
                    # RTMPS on the fourth port; clients go there.
                    cert, key, _ = self.certificate()
                    protocol += (f"  tls:\n    - listen: \"127.0.0.1:{port + 3}\"\n"
                                 f"      cert: \"{cert}\"\n      key: \"{key}\"\n")
            else:
                protocol = "  protocol: tcp\n" if self.proxy_config_has_protocol() else ""
            with open(conf, "w") as f:
                f.write(
                    f"""version: 1
threads: 2
pid_file: {d}/rtmp-proxy.pid
upgrade_sock: {d}/upgrade.sock
proxy:
  listen: "127.0.0.1:{port}"
  health_listen: "127.0.0.1:{port + 1}"
  admin_listen: "127.0.0.1:{port + 2}"
{protocol}  connect_timeout: 10s
  idle_timeout: 300s
  access_log: "off"   # the peers log no line per connection either
  balance: roundrobin
  max_queue: {max(1024, 2 * self.cfg["burst_conns"])}
  queue_timeout: 300s
  health_check:
    interval: 3600s   # one check at start; a check is a bogus client to iperf3
  backends:
    static:
      - addr: "127.0.0.1:{backend_port}"
        max_connections: {max_connections}
"""
                )
            env = dict(os.environ)
            # rtmp mode logs one info line per publish (rtmp_proxy::proxy::rtmp):
            # quiet, like the access log and the peers' logs.
            env.setdefault("RUST_LOG", "info,pingora_load_balancing=error,rtmp_proxy::proxy::rtmp=warn")
            binary = self.args.baseline_bin if target == "rtmp-proxy-base" else PROXY_BIN
            p = self.procs.start(target, [binary, "-c", conf], env=env)
            wait_listen(port, p)
            if target == "rtmp-proxy-rtmps":
                wait_listen(port + 3, p)
            # Serving once the slot table knows the backend.
            end = time.monotonic() + 10
            while time.monotonic() < end:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port + 2}/backends", timeout=1) as r:
                        if json.load(r):
                            break
                except OSError:
                    pass
                time.sleep(0.1)
            else:
                raise RuntimeError("rtmp-proxy never listed its backend")
            if target == "rtmp-proxy-rtmps":
                port += 3
        elif target.startswith("haproxy"):
            conf = os.path.join(d, "haproxy.cfg")
            splice = "    option splice-auto\n" if target == "haproxy-splice" else ""
            # TLS ends in HAProxy (OpenSSL), cert and key in one file.
            ssl = f" ssl crt {self.certificate()[2]}" if target == "haproxy-ssl" else ""
            with open(conf, "w") as f:
                f.write(
                    f"""global
    nbthread 2
    maxconn {self.maxconn}

defaults
    mode tcp
    maxconn {self.maxconn}
    timeout connect 10s
    timeout client 300s
    timeout server 300s
{splice}
listen bench
    bind 127.0.0.1:{port}{ssl}
    balance roundrobin
    server b1 127.0.0.1:{backend_port}
"""
                )
            p = self.procs.start(target, ["haproxy", "-db", "-f", conf])
            wait_listen(port, p)
        elif target == "nginx":
            conf = os.path.join(d, "nginx.conf")
            with open(conf, "w") as f:
                f.write(
                    f"""load_module {NGINX_STREAM_MODULE};
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile {self.nofile};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {self.nofile - 100}; }}
stream {{
    upstream backend {{ server 127.0.0.1:{backend_port}; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_pass backend;
        proxy_connect_timeout 10s;
        proxy_timeout 300s;
    }}
}}
"""
                )
            p = self.procs.start(target, ["nginx", "-p", d, "-c", conf, "-e", f"{d}/error.log"])
            wait_listen(port, p)
        else:
            raise ValueError(target)
        self.started_ok.add(target)
        return p, port

    def stop_proxy(self, target, p):
        if p is not None:
            # rtmp-proxy: SIGINT exits at once (SIGTERM would drain).
            self.procs.stop(p, signal.SIGINT if target.startswith("rtmp-proxy") else signal.SIGTERM)

    # ---- loads

    def run_json(self, name, cmd, timeout):
        self.procs.check_time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.notes.append(f"{name}: timed out after {timeout}s")
            return None
        if r.returncode != 0:
            self.notes.append(f"{name}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            pass
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.notes.append(f"{name}: unreadable output {r.stdout[-200:]!r}")
            return None

    def iperf(self, port, streams):
        secs = self.cfg["tput_seconds"]
        omit = 1 if secs >= 3 else 0
        cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(secs), "-O", str(omit), "-P", str(streams), "-J"]
        for attempt in range(3):
            out = self.run_json(f"iperf3 -P {streams} :{port}", cmd, secs + omit + 20)
            if out and "busy" in out.get("error", "") and attempt < 2:
                # The server is still closing the previous test's streams.
                time.sleep(1.0)
                continue
            break
        if not out or "error" in out:
            if out:
                self.notes.append(f"iperf3 -P {streams} :{port}: {out['error']}")
            return None
        return out["end"]["sum_received"]["bits_per_second"] / 1e9

    # ---- phases

    def order(self, targets, rnd):
        k = rnd % len(targets)
        return targets[k:] + targets[:k]

    def start_all(self, targets, backend_port):
        """Every target at once (idle ones cost nothing), in front of one
        backend, or each in front of its own (`backend_port`: target -> port)."""
        started = {}
        try:
            for t in targets:
                port = backend_port[t] if isinstance(backend_port, dict) else backend_port
                started[t] = self.start_proxy(t, port)
        except Exception:
            self.stop_all(started)
            raise
        return started

    def stop_all(self, started):
        for t, (p, _) in started.items():
            self.stop_proxy(t, p)

    def phase_tput(self, targets):
        targets = raw_targets(targets)
        srv = self.start_backend("iperf")
        started = self.start_all(targets, self.port["iperf"])
        try:
            time.sleep(0.5)
            for it in range(self.cfg["tput_iters"]):
                for t in self.order(targets, it):
                    for n in (1, 8):
                        time.sleep(0.3)
                        v = self.iperf(started[t][1], n)
                        log(f"tput{n} {t}: {v if v is None else round(v, 2)} Gbit/s")
                        self.add(t, f"tput{n}", v)
        finally:
            self.stop_all(started)
            self.procs.stop(srv)

    def phase_cps_lat(self, targets, figures):
        raw = raw_targets(targets)
        if raw:
            self.cps_lat_raw(raw, figures)
        # A second round, RTMP publishes, for every target: only with the
        # rtmp-mode target to compare.
        if "cps" in figures and any(t in RTMP_ONLY for t in targets):
            self.phase_cps_rtmp(plain_targets(targets))

    def cps_lat_raw(self, targets, figures):
        # An echo backend of its own for each target. Through one shared
        # backend address every target's backend connections share one
        # TIME_WAIT space, and a connect's port search cost what the target
        # before it had left there: the ratios moved by up to 10% with the
        # order of the targets.
        ports = {t: self.base + 3100 + k for k, t in enumerate(targets)}
        srvs = []
        try:
            for t in targets:
                srvs.append(self.start_backend("echo", ports[t]))
            started = self.start_all(targets, ports)
        except Exception:
            for srv in srvs:
                self.procs.stop(srv)
            raise
        addr = {t: f"127.0.0.1:{port}" for t, (_, port) in started.items()}
        args = [a for t in targets for a in ("--target", addr[t])]
        try:
            time.sleep(0.5)
            if "cps" in figures:
                secs = self.cfg["cps_seconds"]
                out = self.run_json(
                    "cps",
                    [LOADGEN_BIN, "--threads", "2", "cps", *args, "--concurrency", str(self.cfg["cps_concurrency"]),
                     "--seconds", str(secs), "--slice-ms", "100"],
                    secs * len(targets) + 60,
                )
                if out:
                    if out.get("first_error"):
                        self.notes.append(f"cps: first failed connection: {out['first_error']}")
                    for t in targets:
                        r = out["targets"][addr[t]]
                        log(f"cps {t}: {r['cps']:.0f}/s ({r['errors']} errors, {r['seconds']:.1f} s)")
                        if r["errors"]:
                            self.notes.append(f"cps {t}: {r['errors']} failed connections")
                        self.add(t, "cps", r["cps"])
            if "lat" in figures:
                secs = self.cfg["lat_seconds"] * len(targets)
                out = self.run_json(
                    "latency",
                    [LOADGEN_BIN, "--threads", "1", "latency", *args, "--seconds", str(secs)],
                    secs + 60,
                )
                if out:
                    direct = out["targets"].get(addr.get("direct", ""))
                    for t in targets:
                        r = out["targets"][addr[t]]
                        log(f"lat {t}: p50 {r['p50_us']:.1f} us, p99 {r['p99_us']:.1f} us (n={r['n']})")
                        self.add(t, "lat_p50", r["p50_us"])
                        self.add(t, "lat_p99", r["p99_us"])
                        if direct and t != "direct":
                            self.add(t, "add_p50", r["p50_us"] - direct["p50_us"])
                            self.add(t, "add_p99", r["p99_us"] - direct["p99_us"])
        finally:
            self.stop_all(started)
            for srv in srvs:
                self.procs.stop(srv)

    def phase_ingest(self, targets):
        c = self.cfg
        order = [x for x in targets if x != "direct"]
        # More rounds (--ingest-rounds): each in the reverse order of the one
        # before, so no target always runs after the same neighbour.
        for rnd in range(c["ingest_rounds"]):
            self.ingest_round(order if rnd % 2 == 0 else order[::-1])

    def ingest_round(self, targets):
        c = self.cfg
        for t in targets:
            # rtmp mode: an RTMP media server behind, and publishers that
            # publish first (before START, so outside the CPU window).
            tls = t in TLS_TARGETS
            rtmp = t in RTMP_ONLY or tls
            kind = "rtmp-sink" if rtmp else "sink"
            srv = self.start_backend(kind)
            p, port = self.start_proxy(t, self.port[kind])
            gen = None
            try:
                # The proxy's CPU for opening them all (TLS handshakes, publishes).
                cpu_open0 = cpu_seconds(tree(p.pid))
                gen = self.procs.start(
                    f"ingest-{t}",
                    [LOADGEN_BIN, "--threads", "2", "ingest", "--target", f"127.0.0.1:{port}",
                     "--conns", str(c["ingest_conns"]), "--mbps", "2", "--seconds", str(c["ingest_seconds"])]
                    + (["--rtmp"] if rtmp else []) + (["--tls"] if tls else []),
                    stdout=subprocess.PIPE,
                )
                line = read_line(gen, 60)
                if not line.startswith("START"):
                    self.notes.append(f"ingest {t}: loadgen did not start ({line!r})")
                    continue
                pids = tree(p.pid)
                cpu0 = cpu_seconds(pids)
                self.add(t, "ingest_open_cpu", cpu0 - cpu_open0)
                line = read_line(gen, c["ingest_seconds"] + 60)
                cpu1 = cpu_seconds(tree(p.pid))
                hwm = status_kib(tree(p.pid), "VmHWM")
                try:
                    out = json.loads(line)
                except ValueError:
                    self.notes.append(f"ingest {t}: unreadable result {line!r}")
                    continue
                log(f"ingest {t}: {cpu1 - cpu0:.2f} CPU s, peak RSS {hwm / 1024:.1f} MiB, "
                    f"{out['mbit_per_s']:.0f} Mbit/s ({out['offered_fraction']:.3f} of offered), "
                    f"{out['conns']} conns" + (f", {out['tls']}" if out.get("tls") else ""))
                if out.get("tls"):
                    self.tls_info[t] = out["tls"]
                if out["offered_fraction"] < 0.97 or out["write_errors"] or out["failed_to_open"]:
                    self.notes.append(
                        f"ingest {t}: {out['conns']} connections, {out['offered_fraction']:.3f} of the offered "
                        f"bytes sent, {out['write_errors']} write errors, {out['failed_to_open']} failed to open")
                self.add(t, "ingest_cpu", cpu1 - cpu0)
                self.add(t, "ingest_rss", hwm / 1024)
                self.add(t, "ingest_mbps", out["mbit_per_s"])
            finally:
                if gen is not None:
                    self.procs.stop(gen)
                self.stop_proxy(t, p)
                self.procs.stop(srv)

    def phase_idle(self, targets):
        n = self.cfg["idle_conns"]
        for t in [x for x in raw_targets(targets) if x != "direct"]:
            srv = self.start_backend("echo")
            p, port = self.start_proxy(t, self.port["echo"])
            gen = None
            try:
                rss_fresh = settle_rss(p.pid)
                gen = self.procs.start(
                    f"idle-{t}",
                    [LOADGEN_BIN, "--threads", "2", "idle", "--target", f"127.0.0.1:{port}",
                     "--conns", str(n), "--rounds", "2", "--wait-seconds", "120"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                # Round 1 warms the allocator and the proxy's pools.
                line = read_line(gen, 120)
                if not line.startswith("OPEN"):
                    raise RuntimeError(f"idle {t}: round 1 did not open ({line!r})")
                opened1 = int(line.split()[1])
                rss_open1 = settle_rss(p.pid)
                send_line(gen)
                read_line(gen, 60)  # CLOSED
                rss0 = settle_rss(p.pid)
                send_line(gen)
                line = read_line(gen, 120)
                opened = int(line.split()[1])
                rss1 = settle_rss(p.pid)
                send_line(gen)
                read_line(gen, 60)
                per = (rss1 - rss0) / max(opened, 1)
                first = (rss_open1 - rss_fresh) / max(opened1, 1)
                log(f"idle {t}: {opened} connections; RSS fresh {rss_fresh / 1024:.1f} MiB, round 1 open "
                    f"{rss_open1 / 1024:.1f}, closed {rss0 / 1024:.1f}, round 2 open {rss1 / 1024:.1f}: "
                    f"{per:.1f} KiB per connection (second round), {first:.1f} KiB (first round)")
                self.add(t, "idle_first_kib", first)
                if opened < n:
                    self.notes.append(f"idle {t}: only {opened} of {n} connections opened")
                self.add(t, "idle_kib", per)
            finally:
                if gen is not None:
                    self.procs.stop(gen)
                self.stop_proxy(t, p)
                self.procs.stop(srv)

    def phase_burst(self, targets):
        """RSS before, during and after bursts the proxy must give back: a full
        fleet with a queue of clients that each sent 64 KiB, plus idle HTTP
        clients holding half a request on the health port. Two rounds: memory
        an allocator keeps from the first must not grow in the second."""
        n, settle = self.cfg["burst_conns"], self.cfg["burst_settle"]
        for t in [x for x in raw_targets(targets) if x.startswith("rtmp-proxy")]:
            srv = self.start_backend("echo")
            p, port = self.start_proxy(t, self.port["echo"], max_connections=1)
            held = []
            try:
                before = settle_rss(p.pid)
                for rnd in (1, 2):
                    # The one slot, taken and proven by an echo.
                    holder = socket.create_connection(("127.0.0.1", port), timeout=10)
                    held.append(holder)
                    holder.sendall(b"x")
                    holder.recv(1)
                    chunk = b"\0" * 65536
                    for _ in range(n):
                        s = socket.create_connection(("127.0.0.1", port), timeout=10)
                        held.append(s)
                        s.sendall(chunk)
                    for _ in range(n):
                        try:
                            s = socket.create_connection(("127.0.0.1", port + 1), timeout=10)
                            held.append(s)
                            s.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\n")
                        except OSError:
                            break  # refused over a cap: what the cap is for
                    during = settle_rss(p.pid)
                    for s in held:
                        s.close()
                    held.clear()
                    time.sleep(settle)
                    after = status_kib(tree(p.pid), "VmRSS")
                    log(f"burst {t} round {rnd}: RSS before {before / 1024:.1f} MiB, during "
                        f"{during / 1024:.1f}, {settle} s after {after / 1024:.1f}")
                    self.add(t, "burst_before", before / 1024)
                    self.add(t, f"burst_during{rnd}", during / 1024)
                    self.add(t, f"burst_after{rnd}", after / 1024)
            finally:
                for s in held:
                    s.close()
                self.stop_proxy(t, p)
                self.procs.stop(srv)


    def sinks_for(self, targets, first_port):
        """An rtmp-sink of its own for each target (as the echo backends of
        cps: no target pays for another's TIME_WAIT); every target started."""
        ports = {t: first_port + k for k, t in enumerate(targets)}
        srvs = []
        try:
            for t in targets:
                srvs.append(self.start_backend("rtmp-sink", ports[t]))
            started = self.start_all(targets, ports)
        except Exception:
            for srv in srvs:
                self.procs.stop(srv)
            raise
        return srvs, started

    def phase_cps_rtmp(self, targets):
        """Connections/s where a connection is an RTMP publish: connect, ffmpeg's
        handshake and commands, NetStream.Publish.Start, close."""
        srvs, started = self.sinks_for(targets, self.base + 3110)
        addr = {t: f"127.0.0.1:{port}" for t, (_, port) in started.items()}
        args = [a for t in targets for a in ("--target", addr[t])]
        try:
            time.sleep(0.5)
            secs = self.cfg["cps_seconds"]
            out = self.run_json(
                "cps --rtmp",
                [LOADGEN_BIN, "--threads", "2", "cps", "--rtmp", *args,
                 "--concurrency", str(self.cfg["cps_concurrency"]), "--seconds", str(secs), "--slice-ms", "100"],
                secs * len(targets) + 60,
            )
            if out:
                if out.get("first_error"):
                    self.notes.append(f"cps --rtmp: first failed connection: {out['first_error']}")
                for t in targets:
                    r = out["targets"][addr[t]]
                    log(f"cps_rtmp {t}: {r['cps']:.0f}/s ({r['errors']} errors, {r['seconds']:.1f} s)")
                    if r["errors"]:
                        self.notes.append(f"cps --rtmp {t}: {r['errors']} failed connections")
                    self.add(t, "cps_rtmp", r["cps"])
        finally:
            self.stop_all(started)
            for srv in srvs:
                self.procs.stop(srv)

    def phase_push(self, targets):
        """Throughput through one connection, RTMP publish first, as fast as
        it goes (`loadgen tput`); TLS for the TLS targets. All targets at
        once, each in front of an rtmp-sink of its own, in rotation."""
        c = self.cfg
        srvs, started = self.sinks_for(targets, self.base + 3130)
        secs = c["tput_seconds"]
        try:
            time.sleep(0.5)
            for it in range(c["tput_iters"]):
                for t in self.order(targets, it):
                    time.sleep(0.3)
                    tls = t in TLS_TARGETS
                    out = self.run_json(
                        f"push {t}",
                        [LOADGEN_BIN, "--threads", "1", "tput", "--target", f"127.0.0.1:{started[t][1]}",
                         "--seconds", str(secs), "--rtmp"] + (["--tls"] if tls else []),
                        secs + 40,
                    )
                    if not out:
                        log(f"push {t}: failed")
                        continue
                    if out.get("closed_seconds") is None:
                        self.notes.append(f"push {t}: the target did not close within 10 s; rate over the writes")
                    if out.get("tls"):
                        self.tls_info[t] = out["tls"]
                    log(f"push {t}: {out['gbit_per_s']:.2f} Gbit/s" + (f" ({out['tls']})" if out.get("tls") else ""))
                    self.add(t, "push", out["gbit_per_s"])
        finally:
            self.stop_all(started)
            for srv in srvs:
                self.procs.stop(srv)

    def phase_setup(self, targets):
        """Publish setup time, TCP connect to NetStream.Publish.Start, one
        publish at a time, one to each target in turn."""
        c = self.cfg
        targets = plain_targets(targets)
        srvs, started = self.sinks_for(targets, self.base + 3120)
        addr = {t: f"127.0.0.1:{port}" for t, (_, port) in started.items()}
        args = [a for t in targets for a in ("--target", addr[t])]
        secs = 60 + (c["setup_count"] + c["setup_warmup"]) * len(targets) // 20
        try:
            time.sleep(0.5)
            out = self.run_json(
                "setup",
                [LOADGEN_BIN, "--threads", "1", "setup", *args, "--count", str(c["setup_count"]),
                 "--warmup", str(c["setup_warmup"]), "--seconds", str(secs)],
                secs + 30,
            )
            if out:
                direct = out["targets"].get(addr.get("direct", ""))
                for t in targets:
                    r = out["targets"][addr[t]]
                    if r["failures"]:
                        self.notes.append(f"setup {t}: {r['failures']} failed publishes; first: {r['first_error']}")
                    if r["median_us"] is None:
                        log(f"setup {t}: no publish completed ({r['first_error']})")
                        continue
                    log(f"setup {t}: median {r['median_us'] / 1000:.3f} ms, p90 {r['p90_us'] / 1000:.3f} ms, "
                        f"TCP connect median {r['connect_median_us'] / 1000:.3f} ms (n={r['n']}, "
                        f"{r['failures']} failures)")
                    self.add(t, "setup_p50", r["median_us"] / 1000)
                    self.add(t, "setup_p90", r["p90_us"] / 1000)
                    self.add(t, "setup_connect", r["connect_median_us"] / 1000)
                    if direct and direct["median_us"] is not None and t != "direct":
                        self.add(t, "setup_add_p50", (r["median_us"] - direct["median_us"]) / 1000)
                        self.add(t, "setup_add_p90", (r["p90_us"] - direct["p90_us"]) / 1000)
        finally:
            self.stop_all(started)
            for srv in srvs:
                self.procs.stop(srv)


def read_line(p, timeout):
    """One line of a child's stdout, waiting at most `timeout` seconds."""
    import select

    end = time.monotonic() + timeout
    buf = b""
    fd = p.stdout.fileno()
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], max(0.0, min(1.0, end - time.monotonic())))
        if r:
            ch = os.read(fd, 1)
            if not ch:
                break
            if ch == b"\n":
                return buf.decode(errors="replace")
            buf += ch
    return buf.decode(errors="replace")


def send_line(p):
    p.stdin.write(b"\n")
    p.stdin.flush()


def settle_rss(pid, max_wait=10.0):
    """RSS (KiB) of the process tree once two readings 0.5 s apart agree within 0.5%."""
    time.sleep(1.0)
    last = status_kib(tree(pid), "VmRSS")
    end = time.monotonic() + max_wait
    while time.monotonic() < end:
        time.sleep(0.5)
        now = status_kib(tree(pid), "VmRSS")
        if abs(now - last) <= 0.005 * max(last, 1):
            return now
        last = now
    return last


# --------------------------------------------------------------------------
# report


def first_line(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def machine_info():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    rev = first_line(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml"],
                           capture_output=True, text=True).stdout.strip()
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "rtmp_proxy_rev": rev + (" (with uncommitted changes in src/)" if dirty else ""),
        "rustc": first_line(["rustc", "--version"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "nginx": first_line(["nginx", "-v"]),
        "iperf3": first_line(["iperf3", "--version"]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# figure key, title, unit, higher is better, format
ROWS = [
    ("tput1", "Throughput, 1 stream (iperf3)", "Gbit/s", True, "{:.2f}"),
    ("tput8", "Throughput, 8 streams (iperf3)", "Gbit/s", True, "{:.2f}"),
    ("cps", "New connections per second (connect, 64 B echo, close)", "conn/s", True, "{:.0f}"),
    ("cps_rtmp", "New connections per second as RTMP publishes (connect, handshake, commands to "
     "Publish.Start, close)", "conn/s", True, "{:.0f}"),
    ("lat_p50", "Round trip p50, 64 B ping-pong", "µs", False, "{:.1f}"),
    ("lat_p99", "Round trip p99, 64 B ping-pong", "µs", False, "{:.1f}"),
    ("add_p50", "Added latency p50 (proxy − direct)", "µs", False, "{:.1f}"),
    ("add_p99", "Added latency p99 (proxy − direct)", "µs", False, "{:.1f}"),
    ("ingest_cpu", "Ingest {ingest_conns:,} × 2 Mbit/s, {ingest_seconds} s: proxy CPU", "CPU s", False, "{:.2f}"),
    ("ingest_rss", "Ingest {ingest_conns:,} × 2 Mbit/s: proxy peak RSS (VmHWM)", "MiB", False, "{:.1f}"),
    ("idle_kib", "RSS per idle proxied connection, second round of {idle_conns:,} (steady state)", "KiB", False,
     "{:.1f}"),
    ("idle_first_kib", "RSS per idle proxied connection, first round of {idle_conns:,} (fresh process)", "KiB",
     False, "{:.1f}"),
    ("burst_before", "Burst: RSS of the fresh process", "MiB", False, "{:.1f}"),
    ("burst_during1", "Burst 1: RSS with {burst_conns:,} queued clients (64 KiB each) + {burst_conns:,} half-sent "
     "health requests", "MiB", False, "{:.1f}"),
    ("burst_after1", "Burst 1: RSS {burst_settle} s after it ended", "MiB", False, "{:.1f}"),
    ("burst_during2", "Burst 2 (same again): RSS during", "MiB", False, "{:.1f}"),
    ("burst_after2", "Burst 2: RSS {burst_settle} s after it ended", "MiB", False, "{:.1f}"),
    ("setup_p50", "Publish setup, TCP connect to NetStream.Publish.Start, median", "ms", False, "{:.3f}"),
    ("setup_p90", "Publish setup, TCP connect to NetStream.Publish.Start, p90", "ms", False, "{:.3f}"),
    ("setup_add_p50", "Added publish setup median (target − direct)", "ms", False, "{:.3f}"),
    ("setup_add_p90", "Added publish setup p90 (target − direct)", "ms", False, "{:.3f}"),
    ("push", "Push throughput, 1 connection (loadgen tput: RTMP publish, then bytes as fast as they go; "
     "TLS for the RTMPS and ssl columns)", "Gbit/s", True, "{:.2f}"),
]
# Rows that differ from direct: direct's cell is 0.
ADDED = ("add_p50", "add_p99", "setup_add_p50", "setup_add_p90")
# Absolute figures left out of the chart (their difference to direct is in it, or the table).
NOT_CHARTED = ("lat_p50", "lat_p99", "setup_p50", "setup_p90", "setup_add_p50", "setup_add_p90")


def summarize(bench):
    """Medians per (target, figure)."""
    return {key: statistics.median(vals) for key, vals in bench.samples.items()}


def ratio(med, t, fig):
    a, b = med.get((t, fig)), med.get(("haproxy", fig))
    if a is None or b is None or b == 0:
        return None
    if fig in ADDED and b <= 0:
        return None
    return a / b


def targets_check(med):
    """The issue's targets: (text, measured, met)."""
    out = []

    def r(fig, peer="haproxy"):
        a, b = med.get(("rtmp-proxy", fig)), med.get((peer, fig))
        return None if a is None or b is None or b == 0 else a / b

    for fig, name in (("tput1", "1 stream"), ("tput8", "8 streams")):
        v = r(fig, "haproxy-splice")
        out.append((f"throughput {name} ≥ 1.0× HAProxy splice", fmt_ratio(v), v is not None and v >= 1.0))
        v = r(fig)
        out.append((f"throughput {name} ≥ 1.3× HAProxy tcp", fmt_ratio(v), v is not None and v >= 1.3))
    v = r("cps")
    out.append(("connections/s ≥ 1.0× HAProxy", fmt_ratio(v), v is not None and v >= 1.0))
    a, b = med.get(("rtmp-proxy", "add_p99")), med.get(("haproxy", "add_p99"))
    ok = a is not None and b is not None and a <= b
    out.append(("added p99 latency ≤ HAProxy's",
                "n/a" if a is None or b is None else f"{a:.1f} µs vs {b:.1f} µs", ok))
    for fig, name in (("ingest_cpu", "CPU"), ("ingest_rss", "peak RSS")):
        v = r(fig)
        out.append((f"ingest {name} ≤ HAProxy's", fmt_ratio(v), v is not None and v <= 1.0))
    v = med.get(("rtmp-proxy", "idle_kib"))
    out.append(("idle connection ≤ 16 KiB RSS", "n/a" if v is None else f"{v:.1f} KiB", v is not None and v <= 16))
    added, allowed, p90 = setup_allowance(med)
    out.append(("publish setup, protocol: rtmp, adds ≤ one round trip to the media server + 2 ms (median)",
                "n/a" if added is None or allowed is None
                else f"{added:+.3f} ms (p90 {p90:+.3f} ms); allowed {allowed:.3f} ms",
                added is not None and allowed is not None and added <= allowed))
    v = rtmp_vs_tcp(med, "ingest_cpu")
    out.append(("ingest CPU, protocol: rtmp ≤ 1.05× protocol: tcp", fmt_ratio(v), v is not None and v <= 1.05))
    return out


def setup_allowance(med):
    """Publish setup through rtmp-proxy in rtmp mode: (added median ms, allowed
    ms, added p90 ms). Allowed: one round trip to the media server (the median
    TCP connect straight to the rtmp-sink, SYN to SYN-ACK) + 2 ms."""
    added = med.get(("rtmp-proxy-rtmp", "setup_add_p50"))
    p90 = med.get(("rtmp-proxy-rtmp", "setup_add_p90"))
    rtt = med.get(("direct", "setup_connect"))
    return added, None if rtt is None else rtt + 2.0, p90


def rtmp_vs_tcp(med, fig):
    """rtmp-proxy in rtmp mode / in tcp mode, same run."""
    a, b = med.get(("rtmp-proxy-rtmp", fig)), med.get(("rtmp-proxy", fig))
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(v):
    return "n/a" if v is None else f"{v:.2f}×"


def cell(med, t, fig, f):
    v = med.get((t, fig))
    if v is None:
        return "–"
    s = f.format(v)
    if t != "haproxy" and t != "direct":
        r = ratio(med, t, fig)
        if r is not None:
            s += f" ({r:.2f}×)"
    return s


def chart(med, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    peers = [t for t in ("rtmp-proxy-base", "rtmp-proxy", "rtmp-proxy-rtmp", "haproxy-splice", "nginx")
             if any(k[0] == t for k in med)]
    colors = {"rtmp-proxy-base": "#ffa94d", "rtmp-proxy": "#d9480f", "rtmp-proxy-rtmp": "#862e9c",
              "haproxy-splice": "#5c7cfa", "nginx": "#2b8a3e"}
    groups = [
        ("higher is better", [r for r in ROWS if r[3] and r[0] not in NOT_CHARTED]),
        ("lower is better", [r for r in ROWS if not r[3] and r[0] not in NOT_CHARTED]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 5]})
    # Rows no peer has a ratio for (burst: rtmp-proxy only) would be empty.
    groups = [(title, [r for r in rows if any(ratio(med, t, r[0]) is not None for t in peers)])
              for title, rows in groups]
    for ax, (title, rows) in zip(axes, groups):
        width = 0.8 / len(peers)
        for i, t in enumerate(peers):
            xs, ys = [], []
            for j, row in enumerate(rows):
                v = ratio(med, t, row[0])
                if v is not None:
                    xs.append(j + (i - (len(peers) - 1) / 2) * width)
                    ys.append(v)
            bars = ax.bar(xs, ys, width, label=LABEL[t], color=colors[t])
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.2f}", (x, y), ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([short_name(r[0]) for r in rows], fontsize=8)
        ax.set_title(f"ratio to HAProxy (tcp mode), log scale — {title}", fontsize=10)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[0].legend(fontsize=8)
    fig.suptitle("rtmp-proxy vs peers, same run, loopback (1.0 = HAProxy)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def short_name(fig):
    return {
        "tput1": "throughput\n1 stream",
        "tput8": "throughput\n8 streams",
        "cps": "conn/s",
        "cps_rtmp": "conn/s\nRTMP publish",
        "add_p50": "added\nlatency p50",
        "add_p99": "added\nlatency p99",
        "ingest_cpu": "ingest\nCPU",
        "ingest_rss": "ingest\npeak RSS",
        "idle_kib": "idle conn RSS\n(2nd round)",
        "idle_first_kib": "idle conn RSS\n(1st round)",
    }.get(fig, fig)


def write_rtmp_section(w, med, cols, cfg):
    """The RTMP front: publish setup, ingest and connections/s, rtmp mode
    against tcp mode and the peers."""
    rt = "rtmp-proxy-rtmp"
    has_setup = any((t, "setup_p50") in med for t in cols)
    has_cps = any((t, "cps_rtmp") in med for t in cols)
    has_ingest = (rt, "ingest_cpu") in med
    if not (has_setup or has_cps or has_ingest):
        return
    w("### RTMP front (`protocol: rtmp`)")
    w("")
    w(f"Column \"{LABEL[rt]}\" is rtmp-proxy with its RTMP front in front of a minimal RTMP media")
    w("server (`loadgen rtmp-sink`); column \"rtmp-proxy\" is the same binary with `protocol: tcp`.")
    w("")
    if has_setup:
        d = med.get(("direct", "setup_p50"))
        parts = []
        for t in cols:
            if (t, "setup_p50") not in med:
                continue
            text = f"{LABEL[t]} {med[(t, 'setup_p50')]:.3f} ms (p90 {med[(t, 'setup_p90')]:.3f})"
            if (t, "setup_add_p50") in med:
                text += f", {med[(t, 'setup_add_p50')]:+.3f} ms (p90 {med[(t, 'setup_add_p90')]:+.3f})"
            parts.append(text)
        w("**Publish setup** (TCP connect to `NetStream.Publish.Start`, median, and added to direct): "
          + "; ".join(parts) + ".")
        added, allowed, p90 = setup_allowance(med)
        if added is not None and allowed is not None and d is not None:
            w(f"In rtmp mode the proxy answers the client's handshake and commands itself and only after")
            w("`publish` connects to the media server, does its own handshake there, replays the commands")
            w("and waits for Publish.Start: the client's exchanges and the server's happen one after the")
            w("other, where a tcp proxy pipes them. That adds "
              f"{added:.3f} ms at the median (p90 {p90:.3f} ms) to direct's {d:.3f} ms; the")
            w(f"allowance is one round trip to the media server ({allowed - 2.0:.3f} ms, the median TCP connect")
            w(f"to it) + 2 ms = {allowed:.3f} ms: {'met' if added <= allowed else '**not met**'}.")
        w("")
    if has_ingest:
        v = rtmp_vs_tcp(med, "ingest_cpu")
        tcp = med.get(("rtmp-proxy", "ingest_cpu"))
        text = (f"**Ingest** ({cfg['ingest_conns']:,} publishers × 2 Mbit/s, {cfg['ingest_seconds']} s): "
                f"rtmp mode {med[(rt, 'ingest_cpu')]:.2f} CPU s")
        if tcp is not None:
            text += f", tcp mode {tcp:.2f} CPU s: rtmp / tcp = {fmt_ratio(v)} (target ≤ 1.05×)"
        h = med.get(("haproxy", "ingest_cpu"))
        if h:
            text += f"; HAProxy {h:.2f} CPU s ({med[(rt, 'ingest_cpu')] / h:.2f}×)"
        text += (f". Peak RSS {med[(rt, 'ingest_rss')]:.1f} MiB in rtmp mode"
                 + (f", {med[('rtmp-proxy', 'ingest_rss')]:.1f} MiB in tcp mode" if ("rtmp-proxy", "ingest_rss") in med
                    else "") + ".")
        w(text)
        w("Once a publisher has its Publish.Start, rtmp mode copies what it sends verbatim, as tcp mode")
        w("does (what the server sends would be parsed and rewritten; the sink sends nothing more). The")
        w("publishes themselves happen before the CPU window, so this is the cost of carrying the streams"
          + (f"; median of {cfg['ingest_rounds']} rounds, in alternating order." if cfg["ingest_rounds"] > 1 else "."))
        w("")
    if has_cps:
        parts = []
        for t in cols:
            if (t, "cps_rtmp") not in med:
                continue
            text = f"{LABEL[t]} {med[(t, 'cps_rtmp')]:.0f}/s"
            r = ratio(med, t, "cps_rtmp")
            if r is not None and t not in ("haproxy", "direct"):
                text += f" ({r:.2f}× HAProxy)"
            parts.append(text)
        v = rtmp_vs_tcp(med, "cps_rtmp")
        w("**Connections/s as RTMP publishes** (connect, handshake, commands to Publish.Start, close): "
          + ", ".join(parts) + (f"; rtmp mode / tcp mode = {fmt_ratio(v)}" if v is not None else "") + ".")
        w("Each such connection costs the proxy in rtmp mode a handshake and command answers of its own")
        w("and a second handshake with the media server, where a tcp proxy only copies bytes.")
        w("")


def write_rtmps_section(w, med, cols, cfg, tls_info, samples, heading="###"):
    """RTMPS: rtmp-proxy terminating TLS (`proxy.tls`) against its plain RTMP
    front and HAProxy with `ssl crt`, same run."""
    rs, rt, hs, hp = "rtmp-proxy-rtmps", "rtmp-proxy-rtmp", "haproxy-ssl", "haproxy"
    if not any((t, f) in med for t in (rs, hs) for f in ("ingest_cpu", "push")):
        return
    w(f"{heading} RTMPS (`proxy.tls`)")
    w("")
    w(f"\"{LABEL[rs]}\" is rtmp-proxy in `protocol: rtmp` with a `proxy.tls` listener: TLS ends in the proxy")
    w("(tokio-rustls), then the client takes the plain RTMP path. \"HAProxy ssl\" is HAProxy `mode tcp` with")
    w("`bind … ssl crt` (OpenSSL). Both present the same self-signed ECDSA P-256 certificate (made with")
    w("openssl at run time) and sit in front of a `loadgen rtmp-sink`; their clients are `loadgen … --tls`"
      + (f", which negotiated {', '.join(sorted(set(tls_info.values())))}." if tls_info else "."))
    w("Plain RTMP for comparison: rtmp-proxy with `protocol: rtmp` (same front, no TLS) and HAProxy tcp.")
    w("")
    show = [t for t in (rt, rs, hp, hs) if any((t, f) in med for f in ("ingest_cpu", "push"))]
    pairs = [("RTMPS / HAProxy ssl", rs, hs), ("RTMPS / plain rtmp", rs, rt), ("HAProxy ssl / HAProxy plain", hs, hp)]
    rows = [
        ("ingest_cpu", f"Ingest {cfg['ingest_conns']:,} × 2 Mbit/s, {cfg['ingest_seconds']} s: proxy CPU", "CPU s",
         "lower", "{:.2f}"),
        ("ingest_open_cpu", f"Opening the {cfg['ingest_conns']:,} publishers (TLS handshakes, publishes): proxy CPU",
         "CPU s", "lower", "{:.2f}"),
        ("ingest_rss", "Ingest: proxy peak RSS (VmHWM)", "MiB", "lower", "{:.1f}"),
        ("push", "Push throughput, 1 connection (loadgen tput)", "Gbit/s", "higher", "{:.2f}"),
    ]
    w("| figure | unit | better | " + " | ".join(LABEL[t] for t in show) + " | "
      + " | ".join(name for name, _, _ in pairs) + " |")
    w("|---|---|---|" + "---|" * (len(show) + len(pairs)))
    for fig, title, unit, better, f in rows:
        if not any((t, fig) in med for t in show):
            continue
        cells = [f.format(med[(t, fig)]) if (t, fig) in med else "–" for t in show]
        ratios = []
        # Opening CPU of a plain target is a few clock ticks: no ratio to it.
        least = 0.1 if fig == "ingest_open_cpu" else 0
        for _, a, b in pairs:
            x, y = med.get((a, fig)), med.get((b, fig))
            ratios.append("–" if x is None or not y or y < least else f"{x / y:.2f}×")
        w(f"| {title} | {unit} | {better} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    w("")
    # Ingest rounds run back to back, so a ratio within one round is
    # steadier than the ratio of medians when the machine's load drifts.
    per_round = []
    for name, a, b in pairs:
        xs, ys = samples.get((a, "ingest_cpu"), []), samples.get((b, "ingest_cpu"), [])
        if len(xs) > 1 and len(xs) == len(ys):
            rs = [x / y for x, y in zip(xs, ys) if y]
            per_round.append(f"{name} " + ", ".join(f"{r:.2f}" for r in rs)
                             + f" (median {statistics.median(rs):.2f}×)")
    if per_round:
        w("Ingest CPU ratios round by round: " + "; ".join(per_round) + ".")
        w("")
    ref = [t for t in cols if (t, "push") in med and (t, "tput1") in med]
    if ref:
        w("The push figure against iperf3 (1 stream) for the same targets in this run, both plain: "
          + ", ".join(f"{LABEL[t]} push {med[(t, 'push')]:.2f} vs iperf3 {med[(t, 'tput1')]:.2f} Gbit/s" for t in ref)
          + ".")
        w("")
    rounds = f"median of {cfg['ingest_rounds']} rounds in alternating order" if cfg["ingest_rounds"] > 1 else "one round"
    w(f"- Ingest: as the ingest figure ({rounds}, one target at a time), every publisher first does its TLS")
    w("  handshake (for the TLS columns) and RTMP publish, all before the CPU window; in the window the proxy")
    w("  decrypts 2 Mbit/s per publisher (25 records of 10,000 bytes a second, each written and flushed")
    w("  by itself) and copies it to the sink. \"Opening\" is the proxy's CPU from before the load client")
    w("  started to its `START`: TLS handshakes, and for rtmp-proxy also its own RTMP handshake and command")
    w("  answers and a second handshake with the sink, where HAProxy only pipes the publish through.")
    w("  The plain HAProxy column's ingest is the tcp ingest figure (same paced bytes, no publish first).")
    w(f"- Push: `loadgen tput --rtmp [--tls]`: one connection publishes, then writes 128 KiB buffers for")
    w(f"  {cfg['tput_seconds']} s as fast as they go, closes its side and waits for the target to close (the sink")
    w("  has read everything); bytes / time to that close. Every target in front of an rtmp-sink of its")
    w(f"  own, all started at once, one run per target in rotation, median of {cfg['tput_iters']}. iperf3 cannot")
    w("  speak TLS, hence this tool; it runs on the same 2 cores as the proxy and encrypts (ring) in the")
    w("  TLS columns, so those columns measure the machine with a TLS client, not the proxy alone.")
    w("- Cryptography: rtmp-proxy's TLS is rustls with aws-lc-rs, HAProxy's OpenSSL 3.0; the client")
    w("  offers X25519 only: HAProxy's OpenSSL 3.0 has no X25519+ML-KEM hybrid, which rtmp-proxy's")
    w("  rustls takes when a client offers it (a costlier handshake, not measured here).")
    w("")


def write_report(bench, info, med, out_md, png_name, smoke, elapsed, load0, load1):
    cfg = bench.cfg
    cols = [t for t in ["direct", "rtmp-proxy-base"] + PROXIES if t in bench.targets]
    lines = []
    w = lines.append
    w("# Benchmarks" + (" (smoke run: figures are not meaningful)" if smoke else ""))
    w("")
    w("rtmp-proxy against HAProxy (tcp mode, plain and with `option splice-auto`) and nginx")
    w("(`stream`), all on loopback in front of the same kind of backends, measured in one run of")
    w("`benches/run`. **Read the ratios, not the absolute figures**: the machine is a small")
    w("virtual machine, so absolute numbers move between runs while ratios measured back to back")
    w("move much less. A ratio is `value / HAProxy's value` in the")
    w("same run; whether higher or lower is better is given per row.")
    w("")
    w("## Machine and versions")
    w("")
    w(f"- Date: {info['date']}; the run took {elapsed / 60:.1f} min; load average {load0} before, {load1} after")
    w(f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, {info['os']}, kernel {info['kernel']}")
    w(f"- rtmp-proxy: git {info['rtmp_proxy_rev']}, release build, {info['rustc']}")
    w(f"- HAProxy: {info['haproxy']}")
    w(f"- nginx: {info['nginx']} with libnginx-mod-stream")
    w(f"- iperf3: {info['iperf3']}")
    if "rtmp-proxy-base" in cols:
        w(f"- Also measured for comparison: {LABEL['rtmp-proxy-base']} (`--baseline-bin`)")
    w("")
    w("## Results")
    w("")
    w("Throughput, connections/s and latency are measured with every target running at once and")
    w("the load taking turns between them (iperf3 runs in rotation, median of "
      f"{cfg['tput_iters']}; connections/s in")
    w("100 ms slices; one ping-pong to each target in turn), so the noise of the shared machine")
    w("falls on all of them alike. Ingest and idle memory run one target at a time. In parentheses:")
    w("the ratio to HAProxy (tcp mode) in the same run.")
    w("")
    w("| figure | unit | better | " + " | ".join(LABEL[t] for t in cols) + " |")
    w("|---|---|---|" + "---|" * len(cols))
    for fig, title, unit, higher, f in ROWS:
        if not any((t, fig) in med for t in cols):
            continue
        title = title.format(**cfg)
        w(f"| {title} | {unit} | {'higher' if higher else 'lower'} | "
          + " | ".join(cell(med, t, fig, f) if not (t == "direct" and fig in ADDED) else "0" for t in cols)
          + " |")
    if any((t, "ingest_mbps") in med for t in cols):
        w("")
        w(f"Ingest load actually carried (Mbit/s, of {2 * cfg['ingest_conns']:,} offered): "
          + ", ".join(f"{LABEL[t]} {med[(t, 'ingest_mbps')]:.0f}" for t in cols if (t, "ingest_mbps") in med) + ".")
    w("")
    write_rtmp_section(w, med, cols, cfg)
    write_rtmps_section(w, med, cols, cfg, bench.tls_info, bench.samples)
    w(f"![ratios to HAProxy]({png_name})")
    w("")
    w("What the profiles showed and what was changed because of it: [benches/PROFILE.md](benches/PROFILE.md).")
    w("")
    w("## Targets (rtmp-proxy, ratios in the same run)")
    w("")
    w("| target | measured | met |")
    w("|---|---|---|")
    for text, measured, ok in targets_check(med):
        w(f"| {text} | {measured} | {'yes' if ok else '**no**'} |")
    w("")
    if bench.notes:
        w("## Notes from this run")
        w("")
        for n in bench.notes:
            w(f"- {n}")
        w("")
    w("## What each figure is")
    w("")
    w(f"- **Throughput**: `iperf3 -c … -t {cfg['tput_seconds']} -P 1|8` through each proxy to one `iperf3 -s`")
    w(f"  backend (control connection included), {cfg['tput_iters']} runs per target in rotation; median of the")
    w("  received bits per second.")
    w(f"- **Connections/s**: `loadgen cps`, {cfg['cps_concurrency']} closed-loop workers: connect, write 64 bytes,")
    w("  read the 64-byte echo, close; each target to a Rust echo backend of its own (through one shared")
    w("  backend, a target's connects paid for the TIME_WAIT state the target before it left). The workers")
    w(f"  move to the next target every 100 ms, in a fresh (seeded) order each round, {cfg['cps_seconds']} s per")
    w("  target in all.")
    w("  A closed loop measures what the whole machine (load client, echo backend and proxy on 2 cores)")
    w("  completes, so differences between proxies are diluted.")
    w("- **Latency**: `loadgen latency`, one connection per target, 64-byte write then 64-byte read,")
    w(f"  one round trip to each target in turn for {cfg['lat_seconds']} s per target, after 1,000 warm-up")
    w("  rounds, each target to an echo backend of its own; added latency = proxy − direct of the same run.")
    w(f"- **Ingest**: `loadgen ingest`, {cfg['ingest_conns']} connections each writing 2 Mbit/s as 25 frames/s")
    w(f"  (frame times spread evenly) to a sink backend for {cfg['ingest_seconds']} s once all are open; the proxy's")
    w("  utime+stime over that window from `/proc/PID/stat` (all processes: nginx's master and workers)")
    w("  and its peak RSS (`VmHWM`, summed over processes) for its whole life.")
    w(f"- **Idle connection**: `loadgen idle` opens {cfg['idle_conns']} connections through the proxy, each proven")
    w("  end to end by a 1-byte echo, closes them, opens them again. Second round (the steady state the")
    w("  target is about): (RSS with the second round open − RSS after the first round closed) /")
    w("  connections; memory an allocator or pool keeps from the first round is not counted again.")
    w("  First round: (RSS with the first round open − RSS of the fresh process) / connections, the")
    w("  cost from cold. RSS is summed over the proxy's processes; kernel socket memory is in no one's RSS.")
    w(f"- **Publish setup**: `loadgen setup`, {cfg['setup_count']} RTMP publishes per target after")
    w(f"  {cfg['setup_warmup']} not counted, one at a time, one to each target in turn (5 ms apart), each")
    w("  timed from the start of its TCP connect to the arrival of `NetStream.Publish.Start`, then")
    w("  closed. The client replays what a real ffmpeg sent (`src/rtmp/testdata/ffmpeg_publish.bin`:")
    w("  C0+C1; after S0+S1+S2, C2 and the commands up to `publish`, 348 bytes). Every target is in")
    w("  front of a `loadgen rtmp-sink` of its own, a minimal media server: it answers the handshake")
    w("  (S2 echoes C1), reads until `publish` and sends `onStatus` NetStream.Publish.Start; direct")
    w("  is the client straight to it. The tcp-mode proxies pipe each exchange; in `protocol: rtmp`")
    w("  rtmp-proxy answers the client's handshake and commands itself, connects to the media")
    w("  server only after `publish`, then does its own handshake there, replays the commands and")
    w("  waits for Publish.Start. Added = target − direct, median and p90 of the same run; one round")
    w("  trip to the media server is the median TCP connect straight to the sink.")
    w(f"- **Connections/s as RTMP publishes**: `loadgen cps --rtmp`, as connections/s above, but a")
    w("  connection is the publish just described (to `NetStream.Publish.Start`), then close; every")
    w("  target in front of an rtmp-sink of its own.")
    w("- **Ingest, `protocol: rtmp`**: as ingest above, but every publisher first publishes (as in")
    w("  publish setup; all before the CPU window opens) to an rtmp-sink through rtmp-proxy in rtmp")
    w("  mode; then the same paced bytes, which rtmp mode copies to the server verbatim.")
    w(f"- **Burst**: rtmp-proxy only (the others have no queue or health port). One backend with")
    w(f"  `max_connections: 1`, taken by one client; then {cfg['burst_conns']:,} clients that each send 64 KiB and")
    w(f"  wait in the queue, and {cfg['burst_conns']:,} connections to the health port that each send half a")
    w(f"  request; all closed together, then RSS again {cfg['burst_settle']} s later. Twice in one process: memory")
    w("  kept after a burst is what a small container pays for good.")
    w("- **Push throughput** and **RTMPS**: see the RTMPS section above; HAProxy ssl is `bind … ssl crt")
    w("  <cert+key>` with otherwise the same settings as HAProxy tcp.")
    w("- Every peer is started fresh for each phase, on its own port, with 2 threads or workers:")
    w("  rtmp-proxy `threads: 2`, `protocol: tcp` (`protocol: rtmp` and `handshake_timeout: 60s` for")
    w("  the rtmp-mode column, whose one info line per publish is turned off with")
    w("  `RUST_LOG=…,rtmp_proxy::proxy::rtmp=warn`), `max_connections: 0`, `access_log: off`; HAProxy")
    w("  `nbthread 2`, no logging, `timeout client/server 300s`; nginx `worker_processes 2`, no access")
    w("  log, `proxy_timeout 300s`: no peer writes a line per connection. Configs are written to the")
    w("  run's work directory. Each process runs in a session of its own; where the kernel's autogroup")
    w("  scheduling is on (as here), that makes it a CPU scheduling group of its own, as separate")
    w("  services are.")
    w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w("benches/run            # full run, about 20 minutes; rewrites BENCHMARKS.md and benchmarks.png")
    w("benches/run --smoke    # a few seconds per figure: checks every peer starts and each figure is produced")
    w("cargo bench            # Criterion micro-benchmarks (RTMP front, slot selection)")
    w("```")
    w("")
    w("`benches/run` installs what is missing (Debian's haproxy, nginx with libnginx-mod-stream, iperf3;")
    w("matplotlib in `.venv`), builds the release binary and `benches/loadgen` (a small package of its own), and keeps all")
    w("traffic on 127.0.0.1. `benches/run --help` lists options (subset of figures or peers, iperf3 runs,")
    w("`--baseline-bin` to measure a second rtmp-proxy build in the same run).")
    w("")
    with open(out_md, "w") as f:
        f.write("\n".join(lines))


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds per figure; checks peers start and figures appear")
    ap.add_argument("--figures", default=",".join(FIGURES), help=f"subset of {','.join(FIGURES)}")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS), help=f"subset of {','.join(ALL_TARGETS)}")
    ap.add_argument("--tput-iters", type=int, help="iperf3 runs per target and stream count (median taken)")
    ap.add_argument("--ingest-rounds", type=int, default=1,
                    help="ingest runs per target, in alternating order (median taken); more rounds steady the "
                    "rtmp-vs-tcp CPU ratio at about 35 s per target and round")
    ap.add_argument("--baseline-bin", help="also measure this rtmp-proxy binary (e.g. a build before a change), "
                    "as target rtmp-proxy-base")
    ap.add_argument("--baseline-label", default="rtmp-proxy (baseline build)",
                    help="column name for --baseline-bin in the report")
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("BENCH_PORT_BASE", "24100")),
                    help="first of the ~3200 ports used; keep it below the ephemeral range")
    ap.add_argument("--out", help="report path (default BENCHMARKS.md, or the work directory for --smoke)")
    ap.add_argument("--workdir", help="configs, logs and results.json (default target/bench/<time>)")
    args = ap.parse_args()

    cfg = dict(SMOKE if args.smoke else FULL)
    if args.tput_iters:
        cfg["tput_iters"] = args.tput_iters
    cfg["ingest_rounds"] = max(1, args.ingest_rounds)
    # Each further ingest round takes about 35 s per target (9 at most).
    cfg["deadline"] += (cfg["ingest_rounds"] - 1) * 40 * 9
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.workdir = args.workdir or os.path.join(TARGET_DIR, "bench", ("smoke-" if args.smoke else "") + stamp)
    out_md = args.out or (os.path.join(args.workdir, "BENCHMARKS.md") if args.smoke else os.path.join(ROOT, "BENCHMARKS.md"))
    figures = [f for f in args.figures.split(",") if f]
    known = ALL_TARGETS + (["rtmp-proxy-base"] if args.baseline_bin else [])
    if args.baseline_bin and "rtmp-proxy-base" not in args.targets:
        args.targets += ",rtmp-proxy-base"
    targets = [t for t in ["direct", "rtmp-proxy-base"] + PROXIES if t in args.targets.split(",") and t in known]
    bad = [f for f in figures if f not in FIGURES] + [t for t in args.targets.split(",") if t not in known]
    if bad:
        ap.error(f"unknown figure or target: {bad}")

    # Many connections at once: raise the descriptor limit for us and our children.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cfg_need = 2 * cfg["idle_conns"] + 200
    if nofile < cfg_need:
        sys.exit(f"open-file limit {nofile} is below the {cfg_need} the idle-connection figure needs")

    LABEL["rtmp-proxy-base"] = args.baseline_label
    bench = Bench(args, cfg)
    bench.targets = targets
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = (int(x) for x in f.read().split())
    if args.port_base + 3200 > lo and args.port_base < hi:
        sys.exit(f"--port-base {args.port_base}: ports overlap the ephemeral range {lo}-{hi}")
    busy = [port for port in bench.port.values() if listening(port)]
    if busy:
        sys.exit(f"ports already in use: {busy}; pass --port-base")
    for path in (PROXY_BIN, LOADGEN_BIN):
        if not os.access(path, os.X_OK):
            sys.exit(f"missing {path}: run benches/run (it builds it)")

    info = machine_info()
    log(f"work directory {args.workdir}; figures {figures}; targets {targets}")
    load0 = loadavg()
    t0 = time.monotonic()
    failed = None

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if "tput" in figures:
            bench.phase_tput(targets)
        if "cps" in figures or "lat" in figures:
            bench.phase_cps_lat(targets, figures)
        if "ingest" in figures:
            bench.phase_ingest(targets)
        if "idle" in figures:
            bench.phase_idle(targets)
        if "burst" in figures:
            bench.phase_burst(targets)
        if "setup" in figures:
            bench.phase_setup(targets)
        if "push" in figures:
            bench.phase_push(targets)
    except (Deadline, RuntimeError, KeyboardInterrupt) as e:
        failed = f"{type(e).__name__}: {e}"
        log(f"stopped: {failed}")
        bench.notes.append(f"run stopped early: {failed}")
    finally:
        bench.procs.stop_all()
    elapsed = time.monotonic() - t0
    load1 = loadavg()

    med = summarize(bench)
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({
            "info": info, "config": cfg, "load_before": load0, "load_after": load1,
            "samples": {f"{t}/{fig}": v for (t, fig), v in bench.samples.items()},
            "medians": {f"{t}/{fig}": v for (t, fig), v in med.items()},
            "notes": bench.notes,
        }, f, indent=1)
    png = os.path.join(os.path.dirname(os.path.abspath(out_md)), "benchmarks.png")
    try:
        chart(med, png)
    except Exception as e:  # the table matters more than the picture
        bench.notes.append(f"chart not drawn: {e}")
    write_report(bench, info, med, out_md, os.path.basename(png), args.smoke, elapsed, load0, load1)
    log(f"wrote {out_md} and {png} ({elapsed / 60:.1f} min)")
    for text, measured, ok in targets_check(med):
        log(f"target {'met ' if ok else 'MISS'} {text}: {measured}")

    # Smoke: every peer started and every asked-for figure was produced.
    if args.smoke or failed:
        want_figs = {"tput": ["tput1", "tput8"], "cps": ["cps"], "lat": ["lat_p50", "lat_p99"],
                     "ingest": ["ingest_cpu", "ingest_rss"], "idle": ["idle_kib"],
                     "burst": ["burst_after2"], "setup": ["setup_p50", "setup_p90"], "push": ["push"]}
        rtmp_run = any(t in RTMP_ONLY for t in targets)
        if rtmp_run:
            want_figs["cps"] = want_figs["cps"] + ["cps_rtmp"]
        missing = []
        for fg in figures:
            for key in want_figs[fg]:
                for t in targets:
                    if t == "direct" and fg in ("ingest", "idle"):
                        continue
                    if fg == "burst" and not t.startswith("rtmp-proxy"):
                        continue
                    # RTMP-only targets: ingest, setup, cps_rtmp and push.
                    if t in RTMP_ONLY and fg not in ("ingest", "setup", "push") and key != "cps_rtmp":
                        continue
                    # TLS targets: ingest and push.
                    if t in TLS_TARGETS and fg not in ("ingest", "push"):
                        continue
                    if (t, key) not in med:
                        missing.append(f"{t}/{key}")
                if fg == "setup" and "direct" in targets:
                    for t in plain_targets(targets):
                        if t != "direct" and (t, "setup_add_p50") not in med:
                            missing.append(f"{t}/setup_add_p50")
        not_started = [t for t in targets if t != "direct" and t not in bench.started_ok]
        if failed or missing or not_started:
            log(f"FAILED: {failed or ''} missing figures {missing}; peers not started {not_started}")
            sys.exit(1)
        log(f"smoke OK: {len(targets)} targets, every figure produced")


if __name__ == "__main__":
    main()
