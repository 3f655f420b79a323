//! Real RTMP peers for the tests: nginx with the RTMP module as a media
//! server, ffmpeg as a publisher, ffprobe as a player. Each nginx gets its
//! own prefix and ports and runs in the foreground as the test's own child
//! (`daemon off; master_process off;`); every process is killed on drop and
//! every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http_get_blocking};

/// Where Debian's libnginx-mod-rtmp puts the module.
const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// An nginx-rtmp media server with `application stream { live on; }` and
/// `/stat` (`rtmp_stat all`).
pub struct Nginx {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
}

impl Nginx {
    /// Starts one and waits until `/stat` answers. `proxy_protocol`: the
    /// RTMP listener expects a PROXY v1 header first.
    pub async fn start(proxy_protocol: bool) -> Nginx {
        let dir = tempfile::tempdir().expect("nginx prefix");
        let rtmp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let pp = if proxy_protocol {
            " proxy_protocol"
        } else {
            ""
        };
        let conf = format!(
            "load_module {RTMP_MODULE};\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\n\
             error_log {d}/error.log info;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             rtmp {{\n  server {{\n    listen {rtmp}{pp};\n    \
             application stream {{ live on; record off; }}\n  }}\n}}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{\n    listen {http};\n    location /stat {{ rtmp_stat all; }}\n  }}\n}}\n",
            d = dir.path().display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("nginx log");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            // The error log before the config is read (default /var/log).
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("nginx log"))
            .stderr(log)
            .spawn()
            .expect("spawn nginx (scripts/install-deps installs it)");
        let mut nginx = Nginx {
            child: Some(child),
            dir,
            rtmp,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if http_get_blocking(http, "/stat").is_ok() {
                break;
            }
            let exited = nginx
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!("nginx did not come up ({exited:?}):\n{}", nginx.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nginx
    }

    /// Kills it: its ports refuse from now on.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: a hung server. The kernel still completes TCP connects to
    /// it, but nothing answers and nothing is read.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("nginx running").id();
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {pid} failed");
    }

    /// `/stat` XML, empty if it does not answer.
    pub fn stat(&self) -> String {
        http_get_blocking(self.http, "/stat")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// True when `/stat` shows `key` publishing in app `stream`.
    pub fn publishing(&self, key: &str) -> bool {
        stat_publishing(&self.stat(), key)
    }

    /// Waits (bounded) until `key` is publishing here.
    pub async fn wait_publishing(&self, key: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.publishing(key) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        format!(
            "{}{}",
            read("stderr.log").unwrap_or_default(),
            read("error.log").unwrap_or_default()
        )
    }

    /// A config entry for `proxy.backends.static`.
    pub fn yaml(&self, max: usize) -> String {
        format!(
            "      - addr: \"{}\"\n        max_connections: {max}\n",
            self.rtmp
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a `/stat` document lists stream `key` as publishing.
pub fn stat_publishing(stat: &str, key: &str) -> bool {
    let name = format!("<name>{key}</name>");
    stat.split("<stream>").skip(1).any(|s| {
        let s = s.split("</stream>").next().unwrap_or_default();
        s.contains(&name) && s.contains("<publishing/>")
    })
}

/// An ffmpeg pushing a test pattern (H.264, 25 fps, keyframe each second)
/// to an RTMP URL until dropped.
pub struct Publisher {
    child: Child,
    log: PathBuf,
}

impl Publisher {
    pub fn start(url: &str, log_dir: &Path, name: &str) -> Publisher {
        let log = log_dir.join(format!("ffmpeg-{name}.log"));
        let out = std::fs::File::create(&log).expect("ffmpeg log");
        let child = Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25"])
            .args(["-f", "flv", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn ffmpeg (scripts/install-deps installs it)");
        Publisher { child, log }
    }

    /// GStreamer publishing a live test pattern (H.264 in FLV) with `sink`:
    /// `rtmpsink` (librtmp, what OBS builds on) or `rtmp2sink`
    /// (GStreamer's own RTMP client).
    pub fn gstreamer(sink: &str, url: &str, log_dir: &Path, name: &str) -> Publisher {
        let log = log_dir.join(format!("gst-{name}.log"));
        let out = std::fs::File::create(&log).expect("gst log");
        let location = match sink {
            "rtmpsink" => format!("location={url} live=1"),
            _ => format!("location={url}"),
        };
        let pipeline =
            "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! h264parse \
             ! flvmux streamable=true !";
        // librtmp's options follow the URL in the same property.
        let child = Command::new("gst-launch-1.0")
            .arg("-q")
            .args(pipeline.split_whitespace())
            .args([sink, &location])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn gst-launch-1.0 (scripts/install-deps installs it)");
        Publisher { child, log }
    }

    /// Still running (it only stops on its own after an error).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What ffmpeg printed (errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stream types ffprobe sees at `url` (e.g. `["video"]`), bounded by
/// `limit`; empty on failure.
pub async fn probe(url: &str, limit: Duration) -> Vec<String> {
    probe_saying(url, limit).await.0
}

/// The stream types ffprobe sees at `url`, and what it printed (an RTMP
/// error's description), within 20 s.
pub async fn ffprobe(url: &str) -> (Vec<String>, String) {
    probe_saying(url, Duration::from_secs(20)).await
}

async fn probe_saying(url: &str, limit: Duration) -> (Vec<String>, String) {
    let run = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-analyzeduration", "1000000"])
        .args(["-show_entries", "stream=codec_type", "-of", "csv=p=0", url])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(limit, run).await {
        Ok(Ok(out)) => (
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        other => (Vec::new(), format!("{other:?}")),
    }
}

/// node-media-server (from npm, `scripts/install-deps` puts it in
/// `.nms/`): a second RTMP server, written independently of nginx-rtmp.
pub struct NodeMediaServer {
    child: Child,
    _dir: tempfile::TempDir,
    pub rtmp: SocketAddr,
    http: SocketAddr,
}

impl NodeMediaServer {
    /// Starts one and waits until its HTTP API answers.
    pub async fn start() -> NodeMediaServer {
        let dir = tempfile::tempdir().expect("nms dir");
        let module =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".nms/node_modules/node-media-server");
        let script = dir.path().join("nms.js");
        std::fs::write(
            &script,
            format!(
                "const NodeMediaServer = require({module:?});\n\
                 const [rtmp, http] = process.argv.slice(2).map(Number);\n\
                 new NodeMediaServer({{ logType: 1,\n\
                 rtmp: {{ port: rtmp, chunk_size: 60000, gop_cache: true, ping: 30, ping_timeout: 60 }},\n\
                 http: {{ port: http, allow_origin: '*' }} }}).run();\n"
            ),
        )
        .expect("write nms.js");
        let (rtmp_port, http_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("nms.log")).expect("nms log");
        let child = Command::new("node")
            .arg(&script)
            .args([rtmp_port.to_string(), http_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("nms log"))
            .stderr(log)
            .spawn()
            .expect("spawn node (scripts/install-deps installs node-media-server)");
        let nms = NodeMediaServer {
            child,
            _dir: dir,
            rtmp: format!("127.0.0.1:{rtmp_port}").parse().unwrap(),
            http: format!("127.0.0.1:{http_port}").parse().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get_blocking(nms.http, "/api/streams").is_err() {
            assert!(Instant::now() < deadline, "node-media-server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        nms
    }

    /// Whether `app`/`key` has a publisher, as the server's API says.
    pub fn publishing(&self, app: &str, key: &str) -> bool {
        let Ok((200, body)) = http_get_blocking(self.http, "/api/streams") else {
            return false;
        };
        let streams: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        !streams[app][key]["publisher"].is_null()
    }

    pub fn yaml(&self, max: usize) -> String {
        format!(
            "      - addr: \"{}\"\n        max_connections: {max}\n",
            self.rtmp
        )
    }
}

impl Drop for NodeMediaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
