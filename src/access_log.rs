//! The access log: one JSON line per client connection when it ends (served
//! or not), and a progress line every `access_log_interval` while a long
//! stream runs, so an hours-long publish is visible before it ends.
//!
//! Lines go to stderr or to a file (`proxy.access_log`), apart from the
//! program's own log. Stream keys appear only redacted; the most recent
//! rejections are also kept in memory for the stats page.

use parking_lot::{Mutex, RwLock};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use log::{info, warn};
use serde::Serialize;

use crate::reason::Reason;

/// How many rejections `/status` lists.
const RECENT: usize = 20;

/// One line. Absent fields are `null`, so every line has the same keys.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Record {
    /// RFC 3339, milliseconds.
    pub time: String,
    /// `end` (the connection closed), `progress` (still running) or
    /// `rejected` (closed without reaching a backend).
    pub event: &'static str,
    pub client: String,
    pub backend: Option<String>,
    pub app: Option<String>,
    /// Redacted.
    pub key: Option<String>,
    pub role: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub queue_wait_ms: u64,
    /// Why it ended; `null` on progress lines.
    pub reason: Option<Reason>,
    /// The auth hook's answer (`allowed`, `denied`, `error_allowed`,
    /// `error_denied`), when one was asked.
    pub auth: Option<&'static str>,
    /// How the media server was chosen: `policy`, `routed` (by the auth
    /// hook), `sticky` (where the stream last ran), `takeover` (the slot
    /// of the session it replaced) or `stream` (a player, where its
    /// stream is).
    pub placement: Option<&'static str>,
    /// Free text for people: the error behind a rejection or a failed
    /// side, or why an RTMP stream could not be identified.
    pub detail: Option<String>,
}

pub struct AccessLog {
    /// `stderr`, `off` or a file path, as configured.
    target: String,
    /// `None` when off. Writers share the read lock: each line is one
    /// `write` (appended, for a file), which the kernel keeps whole; only
    /// [`AccessLog::reopen`] takes it to write.
    sink: RwLock<Option<File>>,
    /// Time between progress lines of one connection.
    pub interval: Duration,
    recent: Mutex<VecDeque<Record>>,
}

impl AccessLog {
    /// `target`: `stderr`, `off`, or a file path (appended to).
    pub fn open(target: &str, interval: Duration) -> Result<Self, AccessLogError> {
        let sink = match target {
            "off" => None,
            "stderr" => Some(
                std::io::stderr()
                    .as_fd()
                    .try_clone_to_owned()
                    .map(File::from)
                    .map_err(|e| AccessLogError {
                        target: "stderr".into(),
                        source: e,
                    })?,
            ),
            path => Some(open_file(path)?),
        };
        Ok(Self {
            target: target.to_owned(),
            sink: RwLock::new(sink),
            interval,
            recent: Mutex::new(VecDeque::new()),
        })
    }

    /// Opens the configured file path again (SIGHUP, after logrotate moved
    /// the file away) and logs the outcome; on failure the old file is
    /// kept. Nothing to do for `stderr` or `off`.
    pub fn reopen(&self) {
        let path = match self.target.as_str() {
            "stderr" | "off" => return,
            path => path,
        };
        match open_file(path) {
            Ok(file) => {
                *self.sink.write() = Some(file);
                info!("access log reopened: {path}");
            }
            Err(e) => warn!("{e}; still writing to the old file"),
        }
    }

    /// Whether lines are written at all (rejections are kept regardless).
    pub fn is_on(&self) -> bool {
        self.target != "off"
    }

    pub fn write(&self, mut record: Record) {
        // Off, only rejections are kept (for the stats page).
        if !self.is_on() && record.event != "rejected" {
            return;
        }
        record.time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        if record.event == "rejected" {
            let mut recent = self.recent.lock();
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(record.clone());
        }
        if !self.is_on() {
            return;
        }
        let mut line = Vec::with_capacity(256);
        if let Err(e) = serde_json::to_writer(&mut line, &record) {
            warn!("cannot encode an access log line: {e}");
            return;
        }
        line.push(b'\n');
        // One write per line, so lines from concurrent connections never
        // interleave; a failing sink must not stop the proxy.
        let sink = self.sink.read();
        if let Some(Err(e)) = sink.as_ref().map(|mut f| f.write_all(&line)) {
            warn!("cannot write the access log: {e}");
        }
    }

    /// The last rejections, oldest first.
    pub fn recent_rejections(&self) -> Vec<Record> {
        self.recent.lock().iter().cloned().collect()
    }
}

/// The access log's file or stderr cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("proxy.access_log: cannot open {target:?}: {source}")]
pub struct AccessLogError {
    target: String,
    source: std::io::Error,
}

fn open_file(path: &str) -> Result<File, AccessLogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AccessLogError {
            target: path.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(path.to_str().unwrap(), Duration::from_secs(60)).unwrap();
        log.write(Record {
            event: "rejected",
            client: "127.0.0.1:1".into(),
            reason: Some(Reason::QueueFull),
            ..Default::default()
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["reason"], "queue_full");
        assert!(v["key"].is_null() && v["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(log.recent_rejections().len(), 1);
    }

    #[test]
    fn reopen_follows_a_renamed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(path.to_str().unwrap(), Duration::from_secs(60)).unwrap();
        let line = |detail: &str| Record {
            event: "end",
            detail: Some(detail.into()),
            ..Default::default()
        };
        log.write(line("first"));
        let old = dir.path().join("access.log.1");
        std::fs::rename(&path, &old).unwrap();
        log.reopen();
        log.write(line("second"));
        assert!(std::fs::read_to_string(&old).unwrap().contains("first"));
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(new.contains("second") && !new.contains("first"), "{new}");
    }

    #[test]
    fn a_bad_path_is_a_clear_error() {
        let e = AccessLog::open("/nonexistent/dir/access.log", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(
            e.to_string().starts_with("proxy.access_log: cannot open"),
            "{e}"
        );
    }
}
