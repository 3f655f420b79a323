#!/usr/bin/env python3
"""Ingest instructions per byte, protocol rtmp vs tcp, under callgrind (or perf syscalls).

The wall-clock ingest CPU of bench.py cannot tell 5% apart on a 2-core
machine; this counts the proxy's user-space instructions (valgrind's
callgrind, switched on after every publisher is past Publish.Start) and
the bytes carried in a fixed window, or its syscalls with `perf stat`.
Build first: `cargo build --release` and bench.py's loadgen. Run the two
modes alternately, e.g. for rep in 1 2 3: tcp then rtmp.

usage: instructions.py MODE(tcp|rtmp) REP KIND(cg|sys) [conns] [window_s]
"""
import json, os, re, signal, subprocess, sys, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CG = os.environ.get("OUT", "/tmp/rtmp-proxy-instructions")
PROXY = os.environ.get("PROXY_BIN", f"{ROOT}/target/release/rtmp-proxy")
LOADGEN = os.environ.get("LOADGEN_BIN", f"{ROOT}/target/release/loadgen")
mode, rep, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conns = int(sys.argv[4]) if len(sys.argv) > 4 else 50
window = float(sys.argv[5]) if len(sys.argv) > 5 else 30.0
settle = 5.0
seconds = 240 if kind == "cg" else 90  # loadgen streaming time after START (bounded)
tag = f"{kind}.{mode}.{rep}"
d = f"{CG}/runs/{tag}"
os.makedirs(d, exist_ok=True)
base = 42000 + 20 * (rep + (10 if mode == "rtmp" else 0) + (30 if kind == "sys" else 0))
sink_port, port = base + 4, base + 10
procs = []


def log(*a):
    print(f"[{tag} {time.strftime('%H:%M:%S')}]", *a, flush=True)


def start(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    procs.append(p)
    return p


def stop(p, sig=signal.SIGINT, wait=30):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def ss_bytes(sport):
    """Sum of bytes_received over established sockets with local port sport."""
    out = subprocess.run(["ss", "-Htin", "state", "established", f"( sport = :{sport} )"],
                         capture_output=True, text=True).stdout
    v = [int(x) for x in re.findall(r"bytes_received:(\d+)", out)]
    return sum(v), len(v)


def snap():
    t = time.monotonic()
    a, na = ss_bytes(port)       # proxy side of client connections: client -> proxy
    b, nb = ss_bytes(sink_port)  # sink side: proxy -> sink
    return dict(t=t, ingress=a, n_in=na, egress=b, n_eg=nb)


def wait_backends(p, timeout=180):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if p.poll() is not None:
            raise RuntimeError("proxy exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port + 2}/backends", timeout=2) as r:
                if json.load(r):
                    return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError("proxy never listed its backend")


def cgc(*args):
    r = subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=120)
    return r.stdout + r.stderr


result = dict(mode=mode, rep=rep, kind=kind, conns=conns, window=window)
try:
    sink = start([LOADGEN, "--threads", "1", "rtmp-sink", "--listen", f"127.0.0.1:{sink_port}",
                  "--max-seconds", "900"], stdout=open(f"{d}/sink.out", "w"), stderr=subprocess.STDOUT)
    conf = f"{d}/rtmp-proxy.yaml"
    protocol = f"  protocol: {mode}\n  handshake_timeout: 300s\n"
    with open(conf, "w") as f:
        f.write(f"""version: 1
threads: 2
pid_file: {d}/rtmp-proxy.pid
upgrade_sock: {d}/upgrade.sock
proxy:
  listen: "127.0.0.1:{port}"
  health_listen: "127.0.0.1:{port + 1}"
  admin_listen: "127.0.0.1:{port + 2}"
{protocol}  connect_timeout: 10s
  idle_timeout: 300s
  access_log: "off"
  balance: roundrobin
  max_queue: 1024
  queue_timeout: 300s
  health_check:
    interval: 3600s
  backends:
    static:
      - addr: "127.0.0.1:{sink_port}"
        max_connections: 0
""")
    env = dict(os.environ)
    env["RUST_LOG"] = "info,pingora_load_balancing=error,rtmp_proxy::proxy::rtmp=warn"
    if kind == "cg":
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=no",
               f"--callgrind-out-file={d}/callgrind.out.%p", PROXY, "-c", conf]
    else:
        cmd = [PROXY, "-c", conf]
    proxy = start(cmd, env=env, stdout=open(f"{d}/proxy.log", "w"), stderr=subprocess.STDOUT)
    wait_backends(proxy)
    log("proxy up, pid", proxy.pid)
    gen = start([LOADGEN, "--threads", "2", "ingest", "--target", f"127.0.0.1:{port}", "--conns", str(conns),
                 "--mbps", "2", "--seconds", str(seconds), "--rtmp"],
                stdout=subprocess.PIPE, stderr=open(f"{d}/loadgen.err", "w"), text=True)
    line = gen.stdout.readline().strip()  # START n (loadgen's own timeouts bound this)
    log("loadgen:", line)
    result["start_line"] = line
    if not line.startswith("START"):
        raise RuntimeError(f"loadgen did not start: {line!r}")
    time.sleep(settle)
    if kind == "cg":
        result["i_on"] = cgc("-i", "on", str(proxy.pid)).strip()
        s0 = snap()
        result["z"] = cgc("-z", str(proxy.pid)).strip()
        s1 = snap()
        time.sleep(window)
        s2 = snap()
        result["dump"] = cgc("-d", f"window", str(proxy.pid)).strip()
        s3 = snap()
        result["i_off"] = cgc("-i", "off", str(proxy.pid)).strip()
    else:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port + 2}/streams", timeout=5) as r:
                st = json.load(r)
            result["streams"] = len(st) if isinstance(st, list) else (len(st.get("streams", st)) if isinstance(st, dict) else st)
        except Exception as e:
            result["streams"] = repr(e)
        def cpu():
            f = open(f"/proc/{proxy.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]), int(f[12]))
        c0 = cpu()
        s0 = snap()
        pf = subprocess.run(["perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_readv,syscalls:sys_enter_writev,syscalls:sys_enter_recvmsg,syscalls:sys_enter_sendmsg,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_futex,syscalls:sys_enter_clock_nanosleep,syscalls:sys_enter_madvise,syscalls:sys_enter_mmap,syscalls:sys_enter_munmap,syscalls:sys_enter_brk,syscalls:sys_enter_sched_yield,syscalls:sys_enter_accept4,syscalls:sys_enter_connect,syscalls:sys_enter_close", "-p", str(proxy.pid), "--", "sleep", str(window)],
                            capture_output=True, text=True, timeout=window + 120)
        s3 = snap()
        c1 = cpu()
        result["cpu_ticks_user_sys"] = (c1[0] - c0[0], c1[1] - c0[1])
        s1, s2 = s0, s3
        counts = {}
        for l in pf.stderr.splitlines():
            f = l.split(",")
            if len(f) > 3 and f[0].strip().isdigit() and int(f[0]) > 0:
                counts[f[2]] = int(f[0])
        result["syscalls"] = counts
        # CPU time of the proxy over the same window, for reference
    result["snaps"] = [s0, s1, s2, s3]
    for k in ("ingress", "egress"):
        result[f"{k}_bytes"] = ((s2[k] + s3[k]) - (s0[k] + s1[k])) / 2
        result[f"{k}_uncert"] = ((s1[k] - s0[k]) + (s3[k] - s2[k])) / 2
    result["window_wall"] = ((s2["t"] + s3["t"]) - (s0["t"] + s1["t"])) / 2
    log("bytes in window: ingress", result["ingress_bytes"], "egress", result["egress_bytes"],
        "conns", s1["n_in"], s1["n_eg"], "wall", round(result["window_wall"], 2))
    # Let loadgen finish on its own? No: stop it now (its result isn't needed for the window).
    stop(gen, signal.SIGINT, 10)
finally:
    for p in reversed(procs):
        stop(p)
    with open(f"{d}/result.json", "w") as f:
        json.dump(result, f, indent=1)
if kind == "cg":
    outs = [x for x in os.listdir(d) if x.startswith("callgrind.out") and x.endswith(".1")]
    for o in outs:
        txt = open(f"{d}/{o}").read()
        m = re.search(r"^(?:summary|totals): (\d+)", txt, re.M)
        result["Ir"] = int(m.group(1)) if m else None
        result["dumpfile"] = o
    with open(f"{d}/result.json", "w") as f:
        json.dump(result, f, indent=1)
    log("Ir", result.get("Ir"), "Ir/egress byte", result.get("Ir") and result["Ir"] / result["egress_bytes"])
