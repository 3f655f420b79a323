//! RTMP as the proxy speaks it: the server's side of a connection up to
//! the client's `publish` or `play`, after which the proxy knows where the
//! client is going and hands it to a media server.
//!
//! Layers, each knowing nothing of the ones above it:
//!
//! 1. bytes -> handshake ([`handshake`]): S0+S1+S2 for a client's C0+C1,
//!    simple or digest, and the proxy's own C0+C1 and C2 towards a server.
//! 2. bytes -> chunks -> messages ([`chunk`]): chunk headers, chunk size,
//!    interleaving and reassembly; no meaning beyond framing. Only command
//!    messages are buffered; media is skipped by counting. [`rechunk`]
//!    reads a server's chunk stream and writes it again for the client.
//! 3. messages -> AMF0 values ([`amf0`]), both ways.
//! 4. values -> commands ([`command`]): the client's `connect`,
//!    `releaseStream`, `FCPublish`, `createStream`, `getStreamLength`,
//!    `publish`, `play`, and a server's `_result`, `_error`, `onStatus`;
//!    meaning starts here.
//! 5. commands -> [`Progress`]: [`Front`] keeps the little session state
//!    (the `connect` seen, the FCPublish name, the answers given) and
//!    decides when to stop.
//!
//! Everything is bounded: the chunk stream bytes looked at
//! ([`MAX_OBSERVED_BYTES`]), message size and chunk stream count
//! ([`chunk`]), AMF0 depth and value count ([`amf0`]), commands answered.
//! Input may be split at any byte boundary with identical results. Nothing
//! panics on any input.

// Outside tests, nothing here may panic: enforce the usual suspects.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation
    )
)]

pub mod amf0;
pub mod chunk;
pub mod command;
pub mod handshake;
pub mod rechunk;
pub mod upstream;

use std::fmt;

use amf0::Value;
use command::{Command, Invoke};
pub use command::ClientFields;
use rechunk::{ChunkWriter, Header};

/// C0 (version) + C1 (1536 bytes), what the client sends before anything else.
pub const C0C1_LEN: usize = 1537;
/// C2 echoes S1 and carries nothing we need.
pub const C2_LEN: usize = 1536;
/// The only version byte plain RTMP uses (6 and 8 are RTMPE).
pub const RTMP_VERSION: u8 = 3;
/// Chunk stream bytes (after C2) examined before giving up. ffmpeg's
/// `publish` ends 348 bytes in, its `play` 367; media only follows them.
pub const MAX_OBSERVED_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Publish {
        /// Publishing type as sent: "live", "record" or "append"; "live"
        /// when the client omits it.
        kind: String,
    },
    Play,
}

impl Role {
    /// `publish` or `play`: the metric label and what listings show.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Publish { .. } => "publish",
            Self::Play => "play",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub app: String,
    pub tc_url: Option<String>,
    /// Stream name as sent, including any `?query`. A secret: log it only
    /// through [`redact`].
    pub stream_key: String,
    pub role: Role,
    pub client: ClientFields,
}

/// Shows at most the first 4 characters of `key`, and never more than a
/// third of them, followed by `…` (always, so an empty key shows as `…`).
pub fn redact(key: &str) -> String {
    let shown = (key.chars().count() / 3).min(4);
    key.chars().take(shown).chain(['…']).collect()
}

/// `text` (say, a media server's error) with every occurrence of `key`,
/// and of its name without the `?query`, redacted.
pub fn redact_in(text: &str, key: &str) -> String {
    let name = key.split_once('?').map_or(key, |(name, _)| name);
    let mut out = text.to_owned();
    for secret in [key, name] {
        if !secret.is_empty() {
            out = out.replace(secret, &redact(key));
        }
    }
    out
}

/// Drops a `?query` (which may carry tokens) from a URL or app for display.
fn without_query(s: &str) -> String {
    match s.split_once('?') {
        Some((head, _)) => format!("{head}?…"),
        None => s.to_owned(),
    }
}

impl fmt::Debug for StreamInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamInfo")
            .field("app", &without_query(&self.app))
            .field("tc_url", &self.tc_url.as_deref().map(without_query))
            .field("stream_key", &redact(&self.stream_key))
            .field("role", &self.role)
            .field("client", &self.client)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Nothing decisive yet; feed more.
    NeedMore,
    /// A `publish` or `play` was seen. Final.
    Found(StreamInfo),
    /// Not RTMP we understand, or a limit was hit. Final. The reason is
    /// logged: `byte_limit`, `no_connect`, `connect_without_app`,
    /// `no_stream_name`, `too_many_commands`, those of [`chunk::ChunkError::reason`]
    /// (`unknown_chunk_stream`, `too_many_chunk_streams`,
    /// `message_too_large`, `bad_message_type`, `bad_chunk_size`,
    /// `bad_control_message`) and of [`command::CommandError::reason`]
    /// (`bad_amf0`, `bad_command`, `bad_connect`).
    Unknown(&'static str),
}

/// The message stream id the front gives every `createStream`, as
/// nginx-rtmp, SRS and node-media-server give the first one.
pub const STREAM_ID: u32 = 1;
/// Commands answered per connection; real clients send 3 to 5.
const MAX_ANSWERED: usize = 32;
/// Window acknowledgement size and peer bandwidth the front announces,
/// nginx-rtmp's defaults.
const WINDOW: u32 = 5_000_000;
/// Chunk streams of the front's messages, as nginx-rtmp uses them.
const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_STATUS: u32 = 5;
const MSG_WINDOW_ACK_SIZE: u8 = 5;
const MSG_SET_PEER_BANDWIDTH: u8 = 6;

/// A command the front answered, so the server's answer to the same
/// replayed command must not reach the client twice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answered {
    pub txid: f64,
    /// The answer carried a stream id ([`STREAM_ID`]) the server must match.
    pub gave_stream: bool,
}

/// The proxy's side of the command phase: reads the client's bytes after
/// C0+C1 (C2, then the chunk stream), answers `connect`, `releaseStream`,
/// `FCPublish`, `createStream` and `getStreamLength` as a media server
/// would, and stops at the `publish` or `play`, which it leaves for the
/// server to answer.
pub struct Front {
    progress: Progress,
    /// Dropped once `progress` is final, freeing every buffer.
    session: Option<Box<Session>>,
    /// What the client has seen from the proxy, for the chunk stream that
    /// continues with the server's messages.
    writer: ChunkWriter,
    answered: Vec<Answered>,
}

struct Session {
    c2_left: usize,
    budget_left: usize,
    chunks: chunk::ChunkDecoder,
    /// From the last `connect`: (app, tcUrl, the rest).
    connect: Option<(String, Option<String>, ClientFields)>,
    /// Stream name from FCPublish (or releaseStream), for a `publish`
    /// without a usable one.
    announced: Option<String>,
}

impl Default for Front {
    fn default() -> Self {
        Self::new()
    }
}

impl Front {
    pub fn new() -> Self {
        Self {
            progress: Progress::NeedMore,
            session: Some(Box::new(Session {
                c2_left: C2_LEN,
                budget_left: MAX_OBSERVED_BYTES,
                chunks: chunk::ChunkDecoder::new(),
                connect: None,
                announced: None,
            })),
            writer: ChunkWriter::default(),
            answered: Vec::new(),
        }
    }

    /// Feeds the next bytes the client sent, appending the proxy's answers
    /// to `reply`. Once the result is final (`Found` / `Unknown`), further
    /// calls return it without looking.
    pub fn feed(&mut self, bytes: &[u8], reply: &mut Vec<u8>) -> &Progress {
        let mut answers = Answers {
            writer: &mut self.writer,
            answered: &mut self.answered,
            out: reply,
        };
        if let Some(done) = self
            .session
            .as_mut()
            .and_then(|s| s.feed(bytes, &mut answers))
        {
            self.progress = done;
            self.session = None;
        }
        &self.progress
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The client's side of the chunk stream as the proxy left it.
    pub fn writer(&self) -> &ChunkWriter {
        &self.writer
    }

    pub fn answered(&self) -> &[Answered] {
        &self.answered
    }

    /// An `onStatus` error for the `publish` or `play`: what ffmpeg prints
    /// as "Server error: {description}" and librtmp logs before closing.
    pub fn refuse(&mut self, code: &str, description: &str, reply: &mut Vec<u8>) {
        let mut answers = Answers {
            writer: &mut self.writer,
            answered: &mut self.answered,
            out: reply,
        };
        answers.status("error", code, description);
    }
}

impl Session {
    fn feed(&mut self, bytes: &[u8], answers: &mut Answers<'_>) -> Option<Progress> {
        let skip = self.c2_left.min(bytes.len());
        self.c2_left = self.c2_left.saturating_sub(skip);
        let bytes = bytes.get(skip..).unwrap_or_default();
        let (mut now, over) = bytes
            .split_at_checked(self.budget_left.min(bytes.len()))
            .unwrap_or((bytes, &[]));
        self.budget_left = self.budget_left.saturating_sub(now.len());
        loop {
            match self.chunks.next(&mut now) {
                Err(e) => return Some(Progress::Unknown(e.reason())),
                Ok(None) => break,
                Ok(Some(msg)) => match command::parse(msg.msg_type, msg.payload) {
                    Err(e) => return Some(Progress::Unknown(e.reason())),
                    Ok(invoke) => {
                        if let Some(done) = self.on_command(invoke, answers) {
                            return Some(done);
                        }
                    }
                },
            }
        }
        // Only a byte past the budget proves it was exceeded, so the
        // outcome doesn't depend on how the input was split.
        (!over.is_empty()).then_some(Progress::Unknown("byte_limit"))
    }

    fn on_command(&mut self, invoke: Invoke, answers: &mut Answers<'_>) -> Option<Progress> {
        let txid = invoke.txid;
        let (name, role) = match invoke.command {
            Command::Connect {
                app,
                tc_url,
                object_encoding,
                client,
            } => {
                let Some(app) = app else {
                    return Some(Progress::Unknown("connect_without_app"));
                };
                self.connect = Some((app, tc_url, client));
                return answers.connect(txid, object_encoding.unwrap_or(0.0));
            }
            Command::ReleaseStream(name) | Command::FcPublish(name) => {
                if name.as_deref().is_some_and(|n| !n.is_empty()) {
                    self.announced = name;
                }
                return answers.result(txid, Value::Undefined, false);
            }
            Command::CreateStream => {
                return answers.result(txid, Value::Number(f64::from(STREAM_ID)), true);
            }
            Command::GetStreamLength => return answers.result(txid, Value::Number(0.0), false),
            Command::Publish { name, kind } => {
                let kind = kind.unwrap_or_else(|| "live".to_owned());
                let name = name.filter(|n| !n.is_empty()).or(self.announced.take());
                (name, Role::Publish { kind })
            }
            Command::Play(name) => (name, Role::Play),
            Command::Other => return None,
        };
        let Some((app, tc_url, client)) = self.connect.take() else {
            return Some(Progress::Unknown("no_connect"));
        };
        match name.filter(|n| !n.is_empty()) {
            Some(stream_key) => Some(Progress::Found(StreamInfo {
                app,
                tc_url,
                stream_key,
                role,
                client,
            })),
            None => Some(Progress::Unknown("no_stream_name")),
        }
    }
}

/// Writes the front's answers.
struct Answers<'a> {
    writer: &'a mut ChunkWriter,
    answered: &'a mut Vec<Answered>,
    out: &'a mut Vec<u8>,
}

impl Answers<'_> {
    fn message(&mut self, csid: u32, msg_type: u8, msid: u32, payload: &[u8]) {
        let header = Header {
            csid,
            timestamp: 0,
            len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            msg_type,
            msid,
        };
        self.writer.message(&header, payload, self.out);
    }

    fn command(&mut self, csid: u32, msid: u32, values: &[Value]) {
        let mut payload = Vec::new();
        amf0::encode(values, &mut payload);
        self.message(csid, chunk::MSG_COMMAND_AMF0, msid, &payload);
    }

    /// As nginx-rtmp answers: window, peer bandwidth, then `_result`.
    fn connect(&mut self, txid: f64, object_encoding: f64) -> Option<Progress> {
        self.message(CSID_CONTROL, MSG_WINDOW_ACK_SIZE, 0, &WINDOW.to_be_bytes());
        let mut bandwidth = WINDOW.to_be_bytes().to_vec();
        // Limit type 2, dynamic.
        bandwidth.push(2);
        self.message(CSID_CONTROL, MSG_SET_PEER_BANDWIDTH, 0, &bandwidth);
        let text = |s: &str| Value::String(s.to_owned());
        let properties = Value::Object(vec![
            ("fmsVer".into(), text("FMS/3,0,1,123")),
            ("capabilities".into(), Value::Number(31.0)),
        ]);
        let info = Value::Object(vec![
            ("level".into(), text("status")),
            ("code".into(), text("NetConnection.Connect.Success")),
            ("description".into(), text("Connection succeeded.")),
            ("objectEncoding".into(), Value::Number(object_encoding)),
        ]);
        self.answer(txid, properties, info, false)
    }

    /// `_result(txid, null, value)`; nothing for transaction id 0, which
    /// asks for no answer.
    fn result(&mut self, txid: f64, value: Value, gave_stream: bool) -> Option<Progress> {
        self.answer(txid, Value::Null, value, gave_stream)
    }

    fn answer(
        &mut self,
        txid: f64,
        object: Value,
        value: Value,
        gave_stream: bool,
    ) -> Option<Progress> {
        if txid == 0.0 {
            return None;
        }
        if self.answered.len() >= MAX_ANSWERED {
            return Some(Progress::Unknown("too_many_commands"));
        }
        self.answered.push(Answered { txid, gave_stream });
        let name = Value::String("_result".into());
        self.command(CSID_COMMAND, 0, &[name, Value::Number(txid), object, value]);
        None
    }

    fn status(&mut self, level: &str, code: &str, description: &str) {
        let text = |s: &str| Value::String(s.to_owned());
        let info = Value::Object(vec![
            ("level".into(), text(level)),
            ("code".into(), text(code)),
            ("description".into(), text(description)),
        ]);
        let values = [text("onStatus"), Value::Number(0.0), Value::Null, info];
        self.command(CSID_STATUS, STREAM_ID, &values);
    }
}

#[cfg(test)]
mod tests {
    use super::amf0::enc;
    use super::chunk::testutil::{message, set_chunk_size};
    use super::*;

    const PUBLISH: &[u8] = include_bytes!("testdata/ffmpeg_publish.bin");
    const PLAY: &[u8] = include_bytes!("testdata/ffmpeg_play.bin");

    /// xorshift64*: deterministic split sizes without a rand dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    fn feed_whole(bytes: &[u8]) -> Progress {
        Front::new().feed(bytes, &mut Vec::new()).clone()
    }

    /// Feeds in the given piece sizes (cycled), checking that a final
    /// result never changes afterwards.
    fn feed_split(bytes: &[u8], mut sizes: impl FnMut() -> usize) -> Progress {
        let mut obs = Front::new();
        let mut rest = bytes;
        let mut first_final: Option<Progress> = None;
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(sizes().clamp(1, rest.len()));
            rest = tail;
            let p = obs.feed(piece, &mut Vec::new()).clone();
            if let Some(f) = &first_final {
                assert_eq!(&p, f);
            } else if p != Progress::NeedMore {
                assert!(obs.session.is_none(), "buffers must be dropped");
                first_final = Some(p);
            }
        }
        obs.progress().clone()
    }

    /// Whole, byte by byte, and random splits must agree.
    fn feed_all_ways(bytes: &[u8]) -> Progress {
        let whole = feed_whole(bytes);
        assert_eq!(feed_split(bytes, || 1), whole, "byte by byte");
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let max = [2, 17, 200, 5000][seed as usize % 4];
            let got = feed_split(bytes, || (rng.next() % max) as usize + 1);
            assert_eq!(got, whole, "seed {seed}");
        }
        whole
    }

    fn info(role: Role, tc_url: &str) -> Progress {
        // What ffmpeg's publisher and player say they are.
        let flash_ver = match role {
            Role::Play => "LNX 9,0,124,2",
            Role::Publish { .. } => "FMLE/3.0 (compatible; Lavf59.27.100)",
        };
        Progress::Found(StreamInfo {
            app: "stream".into(),
            tc_url: Some(tc_url.into()),
            stream_key: "testkey123".into(),
            role,
            client: ClientFields {
                flash_ver: Some(flash_ver.into()),
                ..Default::default()
            },
        })
    }

    #[test]
    fn ffmpeg_publish_fixture() {
        assert_eq!(PUBLISH[0], RTMP_VERSION);
        let live = Role::Publish {
            kind: "live".into(),
        };
        let want = info(live, "rtmp://127.0.0.1:19351/stream");
        assert_eq!(feed_all_ways(&PUBLISH[C0C1_LEN..]), want);
    }

    #[test]
    fn ffmpeg_play_fixture() {
        assert_eq!(PLAY[0], RTMP_VERSION);
        let want = info(Role::Play, "rtmp://127.0.0.1:19352/stream");
        assert_eq!(feed_all_ways(&PLAY[C0C1_LEN..]), want);
    }

    #[test]
    fn truncated_fixtures_need_more() {
        // The publish command ends 348 bytes into the chunk stream.
        let end = C0C1_LEN + C2_LEN + 348;
        for cut in [C0C1_LEN, C0C1_LEN + 1, 2000, end - 300, end - 1] {
            assert_eq!(feed_whole(&PUBLISH[C0C1_LEN..cut]), Progress::NeedMore);
        }
        assert!(matches!(
            feed_whole(&PUBLISH[C0C1_LEN..end]),
            Progress::Found(_)
        ));
    }

    fn c2() -> Vec<u8> {
        vec![0x5a; C2_LEN]
    }

    fn command(csid: u32, parts: &[Vec<u8>], chunk_size: usize) -> Vec<u8> {
        message(csid, 20, 0, &parts.concat(), chunk_size)
    }

    fn connect(app: &str) -> Vec<u8> {
        let obj = enc::object(&[("app", app), ("tcUrl", "rtmp://h/x?token=s3cret")]);
        command(3, &[enc::string("connect"), enc::number(1.0), obj], 128)
    }

    fn publish_args(name: &str, extra: &[&str]) -> Vec<Vec<u8>> {
        let mut v = vec![enc::string("publish"), enc::number(4.0), enc::null()];
        v.push(enc::string(name));
        v.extend(extra.iter().map(|s| enc::string(s)));
        v
    }

    #[test]
    fn hand_built_session_with_chunk_size_change() {
        let mut b = c2();
        b.extend(connect("live"));
        b.extend(set_chunk_size(60));
        b.extend(command(8, &publish_args("k?token=abc", &["record"]), 60));
        let p = feed_all_ways(&b);
        let Progress::Found(i) = &p else {
            panic!("{p:?}")
        };
        assert_eq!(i.app, "live");
        assert_eq!(i.stream_key, "k?token=abc");
        assert_eq!(
            i.role,
            Role::Publish {
                kind: "record".into()
            }
        );
        assert_eq!(i.role.to_string(), "publish");
        assert_eq!(Role::Play.to_string(), "play");
        let dbg = format!("{i:?}");
        assert!(!dbg.contains("abc") && !dbg.contains("s3cret"), "{dbg}");
    }

    #[test]
    fn publish_falls_back_to_fcpublish_name() {
        let fc = [
            enc::string("FCPublish"),
            enc::number(3.0),
            enc::null(),
            enc::string("fromfc"),
        ];
        let mut b = c2();
        b.extend(connect("live"));
        b.extend(command(3, &fc, 128));
        b.extend(command(3, &publish_args("", &[]), 128));
        let Progress::Found(i) = feed_all_ways(&b) else {
            panic!()
        };
        assert_eq!(
            (i.stream_key.as_str(), i.role),
            (
                "fromfc",
                Role::Publish {
                    kind: "live".into()
                }
            )
        );
    }

    #[test]
    fn amf3_command_messages() {
        let mut b = c2();
        b.extend(connect("app"));
        let play = [
            vec![0],
            enc::string("play"),
            enc::number(0.0),
            enc::null(),
            enc::string("k"),
        ];
        b.extend(message(3, 17, 0, &play.concat(), 128));
        let Progress::Found(i) = feed_all_ways(&b) else {
            panic!()
        };
        assert_eq!(
            (i.app.as_str(), i.stream_key.as_str(), i.role),
            ("app", "k", Role::Play)
        );
    }

    #[test]
    fn session_errors() {
        let mut b = c2();
        b.extend(command(3, &publish_args("k", &[]), 128));
        assert_eq!(feed_all_ways(&b), Progress::Unknown("no_connect"));

        let mut b = c2();
        b.extend(connect("live"));
        b.extend(command(3, &publish_args("", &[]), 128));
        assert_eq!(feed_all_ways(&b), Progress::Unknown("no_stream_name"));

        let mut b = c2();
        let obj = enc::object(&[("tcUrl", "rtmp://h/")]);
        b.extend(command(
            3,
            &[enc::string("connect"), enc::number(1.0), obj],
            128,
        ));
        assert_eq!(feed_all_ways(&b), Progress::Unknown("connect_without_app"));
    }

    #[test]
    fn garbage_is_unknown() {
        let mut b = c2();
        b.extend(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
        assert_eq!(feed_all_ways(&b), Progress::Unknown("bad_message_type"));
        let mut b = c2();
        b.extend(b"\xc3hello");
        assert_eq!(feed_all_ways(&b), Progress::Unknown("unknown_chunk_stream"));
        let mut b = c2();
        b.extend(message(3, 20, 0, b"\x02\x00\x07conn", 128));
        assert_eq!(feed_all_ways(&b), Progress::Unknown("bad_amf0"));
    }

    #[test]
    fn byte_limit() {
        let mut b = c2();
        b.extend(connect("live"));
        let filler = message(6, 9, 0, &vec![0; MAX_OBSERVED_BYTES], 128);
        b.extend(&filler[..MAX_OBSERVED_BYTES - connect("live").len()]);
        // Exactly at the budget: still waiting.
        assert_eq!(feed_all_ways(&b), Progress::NeedMore);
        b.push(0);
        assert_eq!(feed_all_ways(&b), Progress::Unknown("byte_limit"));
    }

    /// A cheap in-tree cousin of the fuzz targets: corrupted real sessions
    /// must never panic (debug builds check overflow) and must not depend
    /// on how they are split.
    #[test]
    fn mutated_fixtures_agree_across_splits() {
        let mut rng = Rng(0x5eed);
        let mut outcomes = std::collections::BTreeSet::new();
        for i in 0..300 {
            let fixture = if i % 2 == 0 { PUBLISH } else { PLAY };
            let mut b = fixture[C0C1_LEN..C0C1_LEN + C2_LEN + 420].to_vec();
            for _ in 0..=rng.next() % 4 {
                let at = C2_LEN + (rng.next() % 420) as usize;
                b[at] = rng.next() as u8;
            }
            let p = feed_all_ways(&b);
            outcomes.insert(match p {
                Progress::Found(_) => "found",
                Progress::NeedMore => "need_more",
                Progress::Unknown(r) => r,
            });
        }
        // The corruption must have exercised more than one path.
        assert!(outcomes.len() >= 4, "{outcomes:?}");
    }

    #[test]
    fn final_result_ignores_more_input() {
        let mut obs = Front::new();
        let first = obs.feed(&PUBLISH[C0C1_LEN..], &mut Vec::new()).clone();
        assert!(matches!(first, Progress::Found(_)));
        let mut more = Vec::new();
        assert_eq!(obs.feed(b"\xff garbage", &mut more), &first);
        assert!(more.is_empty());
    }

    #[test]
    fn redaction_inside_text() {
        let said = "stream testkey123 busy; testkey123?token=s3cret too";
        assert_eq!(
            redact_in(said, "testkey123?token=s3cret"),
            "stream test… busy; test… too"
        );
        assert_eq!(redact_in("x", ""), "x");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("testkey123"), "tes…");
        assert_eq!(redact("abcdef"), "ab…");
        assert_eq!(redact("live_1234567890abcdef"), "live…");
        assert_eq!(redact("ab"), "…");
        assert_eq!(redact(""), "…");
        assert_eq!(redact("ключключ"), "кл…");
    }
}
