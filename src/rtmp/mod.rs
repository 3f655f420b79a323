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
pub use command::ClientFields;
use command::{Command, Invoke};
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
    /// The `publish` or `play` that made the front `Found`, for [`Front::rename`].
    original: Option<Box<Original>>,
}

/// The message that ended the front, as read.
struct Original {
    framing: chunk::Framing,
    payload: Vec<u8>,
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
    /// Set with a `Found` outcome.
    original: Option<Original>,
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
                original: None,
            })),
            writer: ChunkWriter::default(),
            answered: Vec::new(),
            original: None,
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
            self.original = self.session.take().and_then(|s| s.original).map(Box::new);
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

    /// `chunk_stream` (the client's bytes after C2, as fed to this front
    /// and as replayed to a media server) with the `publish` or `play` that
    /// ended the front asking for stream `new_name` instead: for an auth
    /// hook that renames the stream (nginx-rtmp's `on_publish` answering
    /// 3xx with a Location).
    ///
    /// The message's chunks are replaced by one message: the same command
    /// with the same transaction id and other arguments ([`command::rename`]),
    /// on the same chunk stream id under a type 0 header with the same
    /// absolute timestamp, message type and message stream id, cut at the
    /// client's chunk size. Every byte before and after them is copied
    /// unchanged, so the server reads exactly the client's session but for
    /// the name.
    ///
    /// `None` (refuse the rename) unless the front is `Found`, the
    /// message's chunks were contiguous (another chunk stream's chunk among
    /// them would have to be moved, changing what the server reads
    /// around it), `chunk_stream` holds all of them, `new_name` is not
    /// empty and all of the message decodes.
    ///
    /// Caveat: the server now knows that chunk stream's message length,
    /// type and timestamp delta from the new type 0 header. Were the client
    /// to send another message on the same chunk stream id with a type 1,
    /// 2 or 3 header relying on the old length (or delta), the server would
    /// misread it. Clients send their media and metadata on other chunk
    /// streams after `publish` / `play` (ffmpeg, OBS and librtmp do), which
    /// is why only this one message is rewritten and nothing after it.
    /// `FCPublish` / `releaseStream` before it keep the old name: servers
    /// answer them without acting on it.
    pub fn rename(&self, chunk_stream: &[u8], new_name: &str) -> Option<Vec<u8>> {
        if !matches!(self.progress, Progress::Found(_)) || new_name.is_empty() {
            return None;
        }
        let Original {
            framing: f,
            payload,
        } = self.original.as_deref()?;
        if !f.contiguous {
            return None;
        }
        // Offsets past the address space mean input we were never given.
        let start = usize::try_from(f.start).ok()?;
        let end = usize::try_from(f.end).ok()?;
        let (before, rest) = chunk_stream.split_at_checked(start)?;
        let (original, after) = rest.split_at_checked(end.checked_sub(start)?)?;
        // Cheap check that the caller passed the bytes the front read: the
        // range starts with a chunk header of the message's chunk stream.
        if chunk::parse_basic_header(original).1 != f.csid || original.is_empty() {
            return None;
        }
        let payload = command::rename(f.msg_type, payload, new_name)?;
        let mut out = Vec::with_capacity(
            chunk_stream
                .len()
                .saturating_sub(original.len())
                .saturating_add(payload.len())
                .saturating_add(chunk::MAX_HEADER_LEN),
        );
        // One type 0 chunk, so the server needs nothing it saw before on
        // this chunk stream; the length must fit the header's 24 bits.
        let header = Header {
            csid: f.csid,
            timestamp: f.timestamp,
            len: u32::try_from(payload.len())
                .ok()
                .filter(|&l| l <= 0xFF_FFFF)?,
            msg_type: f.msg_type,
            msid: f.msid,
        };
        out.extend_from_slice(before);
        ChunkWriter::with_chunk_size(f.chunk_size).message(&header, &payload, &mut out);
        out.extend_from_slice(after);
        Some(out)
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
                        // Only a publish or play can end the front as
                        // `Found`; copying it (tens of bytes) lets
                        // `Front::rename` rewrite it after the decoder is gone.
                        let ends =
                            matches!(invoke.command, Command::Publish { .. } | Command::Play(_));
                        let payload = ends.then(|| msg.payload.to_vec());
                        if let Some(done) = self.on_command(invoke, answers) {
                            if let (Progress::Found(_), Some(payload), Some(framing)) =
                                (&done, payload, self.chunks.framing())
                            {
                                self.original = Some(Original { framing, payload });
                            }
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

    /// A command message as read back: its parse, all its values, and
    /// its header fields and range.
    #[derive(Debug, PartialEq)]
    struct Read {
        invoke: Invoke,
        values: Result<Vec<Value>, amf0::Amf0Error>,
        framing: chunk::Framing,
    }

    /// Every command message of a client chunk stream, read by a fresh
    /// decoder as a media server would.
    fn read(stream: &[u8]) -> Vec<Read> {
        let mut d = chunk::ChunkDecoder::new();
        let mut input = stream;
        let mut out = Vec::new();
        while let Some(m) = d.next(&mut input).unwrap() {
            let invoke = command::parse(m.msg_type, m.payload).unwrap();
            let body = match m.payload.split_first() {
                Some((0, rest)) if m.msg_type == chunk::MSG_COMMAND_AMF3 => rest,
                _ => m.payload,
            };
            let mut values = Vec::new();
            let mut dec = amf0::Decoder::new(body);
            let values = loop {
                match dec.next_value() {
                    Ok(Some(v)) => values.push(v),
                    Ok(None) => break Ok(values),
                    Err(e) => break Err(e),
                }
            };
            let framing = d.framing().unwrap();
            out.push(Read {
                invoke,
                values,
                framing,
            });
        }
        assert!(input.is_empty());
        out
    }

    /// Renames with a front fed `after_c0c1`, then checks that a server
    /// reads the same messages, bytes around the publish/play unchanged,
    /// but for the name; returns the renamed chunk stream.
    fn check_rename(after_c0c1: &[u8], name: &str) -> Vec<u8> {
        let mut front = Front::new();
        let Progress::Found(found) = front.feed(after_c0c1, &mut Vec::new()).clone() else {
            panic!("not found")
        };
        let stream = &after_c0c1[C2_LEN..];
        let renamed = front.rename(stream, name).expect("renamed");
        let (before, after) = (read(stream), read(&renamed));
        assert_eq!(before.len(), after.len());
        let target = front.original.as_ref().unwrap().framing;
        let mut seen = false;
        for (b, a) in before.iter().zip(&after) {
            if b.framing != target {
                // Offsets shift after the rewritten message; nothing else may.
                let moved = |r: &Read| chunk::Framing {
                    start: 0,
                    end: 0,
                    ..r.framing
                };
                assert_eq!((&b.invoke, &b.values), (&a.invoke, &a.values));
                assert_eq!(moved(b), moved(a));
                continue;
            }
            seen = true;
            // Same header fields; one type 0 message at the same offset.
            let f = a.framing;
            assert_eq!(
                (
                    f.csid,
                    f.msid,
                    f.timestamp,
                    f.msg_type,
                    f.chunk_size,
                    f.start
                ),
                (
                    b.framing.csid,
                    b.framing.msid,
                    b.framing.timestamp,
                    b.framing.msg_type,
                    b.framing.chunk_size,
                    b.framing.start
                )
            );
            assert!(f.contiguous);
            assert_eq!(renamed[f.start as usize] >> 6, 0, "type 0 header");
            let start = f.start as usize;
            assert_eq!(&renamed[..start], &stream[..start]);
            assert_eq!(&renamed[f.end as usize..], &stream[target.end as usize..]);
            // Same command, txid and arguments; only the name differs.
            assert_eq!(a.invoke.txid, b.invoke.txid);
            let want = match &b.invoke.command {
                Command::Publish { kind, .. } => Command::Publish {
                    name: Some(name.into()),
                    kind: kind.clone(),
                },
                Command::Play(_) => Command::Play(Some(name.into())),
                other => panic!("{other:?}"),
            };
            assert_eq!(a.invoke.command, want);
            let (mut bv, av) = (b.values.clone().unwrap(), a.values.clone().unwrap());
            if bv.len() < 4 {
                bv.resize(4, Value::Null);
            }
            bv[3] = Value::String(name.into());
            assert_eq!(av, bv);
        }
        assert!(seen, "the publish/play is among the messages read");
        // And the front reads the renamed session as the same, renamed.
        let mut again = c2();
        again.extend(&renamed);
        let Progress::Found(i) = feed_whole(&again) else {
            panic!()
        };
        let stream_key = name.to_owned();
        assert_eq!(
            i,
            StreamInfo {
                stream_key,
                ..found
            }
        );
        renamed
    }

    #[test]
    fn rename_ffmpeg_fixtures() {
        let long = "x".repeat(5000);
        for fixture in [PUBLISH, PLAY] {
            let after_c0c1 = &fixture[C0C1_LEN..];
            for name in [
                "k",
                "a-much-longer-stream-name",
                "new?token=abc&x=1",
                "ключ",
                &long,
            ] {
                let renamed = check_rename(after_c0c1, name);
                // Only the name's bytes and the one-byte type 3 headers
                // between chunks change the length (the publisher chunks
                // at 4096, the player at 128).
                let mut front = Front::new();
                front.feed(after_c0c1, &mut Vec::new());
                let f = front.original.as_ref().unwrap().framing;
                let size = f.chunk_size as usize;
                let old_len = front.original.as_ref().unwrap().payload.len();
                let new_len = old_len + name.len() - "testkey123".len();
                let headers = new_len.div_ceil(size) - old_len.div_ceil(size);
                let stream = &after_c0c1[C2_LEN..];
                assert_eq!(renamed.len(), stream.len() + new_len - old_len + headers);
                if name.len() > size {
                    assert!(headers > 0, "spans chunks");
                }
            }
        }
    }

    #[test]
    fn rename_hand_built_sessions() {
        // Chunk size 60, publish on chunk stream 8 with a type: names that
        // span fewer and more chunks than the original.
        let mut b = c2();
        b.extend(connect("live"));
        b.extend(set_chunk_size(60));
        b.extend(command(8, &publish_args("k?token=abc", &["record"]), 60));
        b.extend(message(4, 9, 0, &[7; 300], 60));
        for name in ["n", "x".repeat(200).as_str(), "k2?token=def"] {
            check_rename(&b, name);
        }

        // Extended timestamp, on every chunk of the rewritten message too.
        let mut b = c2();
        b.extend(connect("live"));
        let publish = publish_args(&"k".repeat(150), &["live"]).concat();
        b.extend(message(8, 20, 0x1234_5678, &publish, 128));
        check_rename(&b, &"n".repeat(300));

        // Publish with a type 1 header after connect on the same chunk
        // stream: the rewrite carries the absolute timestamp (0 + 7) and
        // the message stream id (1) in a type 0 header.
        let mut b = c2();
        b.extend(connect("live"));
        let publish = publish_args("k", &[]).concat();
        b.extend([0x43, 0, 0, 7, 0, 0, publish.len() as u8, 20]);
        b.extend(&publish);
        let renamed = check_rename(&b, "other");
        let f = read(&renamed).last().unwrap().framing;
        assert_eq!((f.timestamp, f.msid, f.csid), (7, 1, 3));

        // AMF3 command message: keeps type 17 and the selector byte.
        let mut b = c2();
        b.extend(connect("app"));
        let play = [
            vec![0],
            enc::string("play"),
            enc::number(0.0),
            enc::null(),
            enc::string("k"),
            enc::number(-2000.0),
        ];
        b.extend(message(3, 17, 0, &play.concat(), 128));
        let renamed = check_rename(&b, "other?x=1");
        assert_eq!(read(&renamed).last().unwrap().framing.msg_type, 17);

        // Publish naming nothing (FCPublish did): the name is filled in;
        // and one with no argument after the command object at all.
        let fc = [
            enc::string("FCPublish"),
            enc::number(3.0),
            enc::null(),
            enc::string("fromfc"),
        ];
        for publish in [
            publish_args("", &["live"]),
            vec![enc::string("publish"), enc::number(4.0), enc::null()],
        ] {
            let mut b = c2();
            b.extend(connect("live"));
            b.extend(command(3, &fc, 128));
            b.extend(command(3, &publish, 128));
            check_rename(&b, "renamed");
        }
    }

    #[test]
    fn rename_refuses_an_interleaved_publish() {
        let mut b = c2();
        b.extend(connect("live"));
        let video = message(6, 9, 0, &[1; 50], 128);
        // 200 byte name: the publish takes two chunks at 128.
        let publish = command(8, &publish_args(&"k".repeat(200), &[]), 128);
        let mut interleaved = b.clone();
        interleaved.extend(&publish[..12 + 128]);
        interleaved.extend(&video);
        interleaved.extend(&publish[12 + 128..]);
        let mut front = Front::new();
        assert!(matches!(
            front.feed(&interleaved, &mut Vec::new()),
            Progress::Found(_)
        ));
        assert_eq!(front.rename(&interleaved[C2_LEN..], "n"), None);
        // The same chunks with the video before the publish: fine.
        b.extend(&video);
        b.extend(&publish);
        check_rename(&b, "n");
    }

    #[test]
    fn rename_odd_inputs() {
        // Not found (yet, or ever): nothing to rename.
        let after_c0c1 = &PUBLISH[C0C1_LEN..];
        let stream = &after_c0c1[C2_LEN..];
        let mut front = Front::new();
        front.feed(&after_c0c1[..C2_LEN + 300], &mut Vec::new());
        assert_eq!(front.rename(stream, "n"), None);
        let mut front = Front::new();
        front.feed(b"\xc3 not rtmp", &mut Vec::new());
        front.feed(&[0xc3; C2_LEN], &mut Vec::new());
        assert!(matches!(front.progress(), Progress::Unknown(_)));
        assert_eq!(front.rename(stream, "n"), None);

        let mut front = Front::new();
        front.feed(after_c0c1, &mut Vec::new());
        let end = front.original.as_ref().unwrap().framing.end as usize;
        assert_eq!(end, 348);
        // An empty name is no name.
        assert_eq!(front.rename(stream, ""), None);
        // Truncated: None until the whole message is there.
        for cut in 0..=end + 2 {
            let got = front.rename(&stream[..cut], "n");
            assert_eq!(got.is_some(), cut >= end, "cut {cut}");
        }
        // Bytes that aren't what the front read.
        assert_eq!(front.rename(&vec![0; stream.len()], "n"), None);
        assert_eq!(front.rename(&[], "n"), None);

        // Corrupted sessions: whatever is found renames without panicking,
        // against the bytes fed or others.
        let mut rng = Rng(0xface);
        let mut renamed = 0;
        for i in 0..400 {
            let fixture = if i % 2 == 0 { PUBLISH } else { PLAY };
            let mut b = fixture[C0C1_LEN..C0C1_LEN + C2_LEN + 420].to_vec();
            for _ in 0..=rng.next() % 3 {
                let at = C2_LEN + (rng.next() % 420) as usize;
                b[at] = rng.next() as u8;
            }
            let mut front = Front::new();
            if !matches!(front.feed(&b, &mut Vec::new()), Progress::Found(_)) {
                continue;
            }
            let long = "l".repeat(5000);
            let name = ["n", "x?y=z", long.as_str()][i % 3];
            if let Some(r) = front.rename(&b[C2_LEN..], name) {
                renamed += 1;
                // Readable up to where the corruption makes it unreadable.
                let mut d = chunk::ChunkDecoder::new();
                let mut input = &r[..];
                while let Ok(Some(_)) = d.next(&mut input) {}
            }
            front.rename(&fixture[C0C1_LEN + C2_LEN..], name);
            front.rename(&b[C2_LEN + 1..], name);
        }
        assert!(renamed > 50, "{renamed}");
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
