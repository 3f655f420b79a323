//! The server-to-client chunk stream of a connection whose front the proxy
//! answered itself.
//!
//! The client has already read the proxy's own messages on chunk streams
//! the media server uses too, and never sees the server's answers to the
//! commands the proxy answered. Header compression (types 1 to 3 inherit
//! from the previous message on the same chunk stream) would make the
//! server's headers mean something else to the client, so every header is
//! decoded here to absolute values and written again against what the
//! client has seen ([`ChunkWriter`]). Bodies pass through untouched, chunk
//! for chunk: the proxy never sends Set Chunk Size of its own, and it
//! forwards the server's, so both sides chunk at the same size.
//!
//! While a server's answer to the replayed commands is judged, whole
//! messages are held back and shown to a judge, which drops those the
//! proxy already answered and decides when the server has accepted.
//!
//! A type 3 header that starts a message adds the previous timestamp
//! field again, absolute after a type 0, as ffmpeg, librtmp and
//! nginx-rtmp read it; the writer uses the same rule, so the client
//! computes exactly the timestamps decoded here.

use super::chunk::{
    be24, be32, header_len, is_known, parse_basic_header, timestamp_after, ChunkError,
    DEFAULT_CHUNK_SIZE, EXTENDED_TS, MAX_HEADER_LEN, MAX_MESSAGE_LEN, MSG_ABORT,
    MSG_SET_CHUNK_SIZE,
};

/// Chunk streams tracked per direction; media servers use a handful.
const MAX_STREAMS: usize = 64;
/// Bytes held back from the client while a server's answer is judged.
pub const MAX_HELD: usize = 64 * 1024;
/// Protocol control and user control messages (types 1 to 6): small, and
/// always handled whole.
const LAST_CONTROL_TYPE: u8 = 6;

/// A message header with its absolute timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub csid: u32,
    pub timestamp: u32,
    pub len: u32,
    pub msg_type: u8,
    /// Message stream id.
    pub msid: u32,
}

/// What a reader of a chunk stream keeps to decode the next header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Last {
    csid: u32,
    timestamp: u32,
    /// The last timestamp field: absolute after type 0, a delta otherwise.
    field: u32,
    len: u32,
    msg_type: u8,
    msid: u32,
}

impl Last {
    /// Type 3 chunks on this chunk stream carry an extended timestamp.
    fn extended(&self) -> bool {
        self.field >= EXTENDED_TS
    }
}

/// Writes messages to a peer, keeping the header state it has seen.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    chunk_size: u32,
    streams: Vec<Last>,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: Vec::new(),
        }
    }
}

impl ChunkWriter {
    /// A writer to a peer that has seen nothing yet but a Set Chunk Size
    /// of `chunk_size` (at least 1).
    pub fn with_chunk_size(chunk_size: u32) -> Self {
        Self {
            chunk_size: chunk_size.max(1),
            streams: Vec::new(),
        }
    }

    /// A whole message, chunked; a Set Chunk Size takes effect after it.
    pub fn message(&mut self, h: &Header, payload: &[u8], out: &mut Vec<u8>) {
        self.start(h, out);
        let size = usize::try_from(self.chunk_size)
            .unwrap_or(usize::MAX)
            .max(1);
        for (i, chunk) in payload.chunks(size).enumerate() {
            if i > 0 {
                self.continuation(h.csid, out);
            }
            out.extend_from_slice(chunk);
        }
        if h.msg_type == MSG_SET_CHUNK_SIZE {
            if let Some(size) = be32(payload).filter(|s| (1..=0x7FFF_FFFF).contains(s)) {
                self.chunk_size = size;
            }
        }
    }

    /// The first chunk header of a message: the shortest the client can
    /// decode from what it last saw on the chunk stream.
    fn start(&mut self, h: &Header, out: &mut Vec<u8>) {
        let prev = self.streams.iter().position(|s| s.csid == h.csid);
        let (fmt, field) = match prev.and_then(|i| self.streams.get(i)) {
            Some(p) if p.msid == h.msid && h.timestamp >= p.timestamp => {
                let delta = h.timestamp.wrapping_sub(p.timestamp);
                match (p.len == h.len && p.msg_type == h.msg_type, delta == p.field) {
                    (true, true) => (3, delta),
                    (true, false) => (2, delta),
                    (false, _) => (1, delta),
                }
            }
            _ => (0, h.timestamp),
        };
        basic_header(fmt, h.csid, out);
        if fmt < 3 {
            out.extend_from_slice(&field.min(EXTENDED_TS).to_be_bytes()[1..]);
        }
        if fmt < 2 {
            out.extend_from_slice(&h.len.to_be_bytes()[1..]);
            out.push(h.msg_type);
        }
        if fmt == 0 {
            out.extend_from_slice(&h.msid.to_le_bytes());
        }
        if field >= EXTENDED_TS {
            out.extend_from_slice(&field.to_be_bytes());
        }
        let last = Last {
            csid: h.csid,
            timestamp: h.timestamp,
            field,
            len: h.len,
            msg_type: h.msg_type,
            msid: h.msid,
        };
        match prev.and_then(|i| self.streams.get_mut(i)) {
            Some(slot) => *slot = last,
            None => self.streams.push(last),
        }
    }

    /// The header of a message's next chunk.
    fn continuation(&self, csid: u32, out: &mut Vec<u8>) {
        basic_header(3, csid, out);
        if let Some(last) = self.streams.iter().find(|s| s.csid == csid) {
            if last.extended() {
                out.extend_from_slice(&last.field.to_be_bytes());
            }
        }
    }
}

/// Basic header (spec 5.3.1.1) in its shortest form; chunk stream ids
/// below 2 are reserved and never decoded, so never written.
fn basic_header(fmt: u8, csid: u32, out: &mut Vec<u8>) {
    let fmt = fmt << 6;
    let lo = csid.to_be_bytes()[3];
    match csid.checked_sub(64) {
        None => out.push(fmt | (lo & 0x3f)),
        Some(id) => match u8::try_from(id) {
            Ok(id) => out.extend_from_slice(&[fmt, id]),
            Err(_) => {
                let [_, _, hi, lo] = id.min(0xFFFF).to_be_bytes();
                out.extend_from_slice(&[fmt | 1, lo, hi]);
            }
        },
    }
}

/// What a judge decides about a whole message held back from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    Forward,
    /// An answer the client already had from the proxy.
    Drop,
    /// The server has accepted: forward this, the held messages and from
    /// now on everything.
    Accept,
    /// The server refused: stop reading it.
    Refuse,
}

/// Where a [`Rechunker`] stands after a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Holding,
    Passing,
    Refused,
}

enum Mode {
    /// Body bytes go straight to the client.
    Pass,
    /// Collected, for a judge or to be read here.
    Buffer(Vec<u8>),
}

struct InStream {
    last: Last,
    /// Bytes of the current message read so far; 0 between messages.
    received: u32,
    mode: Mode,
}

enum State {
    Header {
        buf: [u8; MAX_HEADER_LEN],
        len: usize,
    },
    Body {
        slot: usize,
        remaining: u32,
    },
}

/// Reads a media server's chunk stream and writes it to the client.
pub struct Rechunker {
    chunk_size: u32,
    streams: Vec<InStream>,
    state: State,
    writer: ChunkWriter,
    /// Messages judged `Forward` while holding, written already against
    /// `writer`, so a refused server's writer must be thrown away.
    held: Option<Vec<u8>>,
}

impl Rechunker {
    /// `writer`: the client's side as the proxy has written it so far.
    /// `holding`: hold messages for a judge until it accepts.
    pub fn new(writer: ChunkWriter, holding: bool) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: Vec::new(),
            state: new_header(),
            writer,
            held: holding.then(Vec::new),
        }
    }

    /// Reads `input`, appending what the client should get to `out`.
    /// While holding, every whole message goes to `judge` first.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        judge: &mut dyn FnMut(&Header, &[u8]) -> Judgement,
    ) -> Result<Phase, ChunkError> {
        while !input.is_empty() {
            if let Some(phase) = self.step(&mut input, out, judge)? {
                return Ok(phase);
            }
        }
        Ok(if self.held.is_some() {
            Phase::Holding
        } else {
            Phase::Passing
        })
    }

    /// One header or one run of body bytes; `Some` only on a refusal.
    fn step(
        &mut self,
        input: &mut &[u8],
        out: &mut Vec<u8>,
        judge: &mut dyn FnMut(&Header, &[u8]) -> Judgement,
    ) -> Result<Option<Phase>, ChunkError> {
        match &mut self.state {
            State::Header { buf, len } => loop {
                let streams = &self.streams;
                let need = header_len(buf.get(..*len).unwrap_or_default(), |csid| {
                    streams
                        .iter()
                        .any(|s| s.last.csid == csid && s.last.extended())
                });
                if *len >= need {
                    let hdr = *buf;
                    return self.on_header(hdr.get(..need).unwrap_or_default(), out, judge);
                }
                let n = need.saturating_sub(*len).min(input.len());
                if n == 0 {
                    return Ok(None);
                }
                let (head, rest) = input.split_at_checked(n).unwrap_or((input, &[]));
                let end = len.saturating_add(n);
                if let Some(dst) = buf.get_mut(*len..end) {
                    dst.copy_from_slice(head);
                }
                *len = end;
                *input = rest;
            },
            State::Body { slot, remaining } => {
                let (slot, left) = (*slot, *remaining);
                let n = left.min(u32::try_from(input.len()).unwrap_or(u32::MAX));
                let (head, rest) = input.split_at_checked(n as usize).unwrap_or((input, &[]));
                *input = rest;
                let left = left.saturating_sub(n);
                let s = self
                    .streams
                    .get_mut(slot)
                    .ok_or(ChunkError::UnknownChunkStream)?;
                match &mut s.mode {
                    Mode::Pass => out.extend_from_slice(head),
                    Mode::Buffer(payload) => payload.extend_from_slice(head),
                }
                s.received = s.received.saturating_add(n);
                if left > 0 {
                    self.state = State::Body {
                        slot,
                        remaining: left,
                    };
                    return Ok(None);
                }
                self.state = new_header();
                if s.received >= s.last.len {
                    return self.complete(slot, out, judge);
                }
                Ok(None)
            }
        }
    }

    fn on_header(
        &mut self,
        hdr: &[u8],
        out: &mut Vec<u8>,
        judge: &mut dyn FnMut(&Header, &[u8]) -> Judgement,
    ) -> Result<Option<Phase>, ChunkError> {
        self.state = new_header();
        let (fmt, csid, rest) = parse_basic_header(hdr);
        let slot = match self.streams.iter().position(|s| s.last.csid == csid) {
            Some(slot) => slot,
            None if fmt == 0 => {
                if self.streams.len() >= MAX_STREAMS {
                    return Err(ChunkError::TooManyChunkStreams);
                }
                self.streams.push(InStream {
                    last: Last {
                        csid,
                        timestamp: 0,
                        field: 0,
                        len: 0,
                        msg_type: 0,
                        msid: 0,
                    },
                    received: 0,
                    mode: Mode::Pass,
                });
                self.streams.len().saturating_sub(1)
            }
            None => return Err(ChunkError::UnknownChunkStream),
        };
        let passing = self.held.is_none();
        let s = self
            .streams
            .get_mut(slot)
            .ok_or(ChunkError::UnknownChunkStream)?;
        let continues = fmt == 3 && s.received > 0;
        if !continues {
            if s.received > 0 && matches!(s.mode, Mode::Pass) {
                // The client holds the start of it: it cannot be dropped.
                return Err(ChunkError::InterruptedMessage);
            }
            s.last = next_header(&s.last, fmt, rest);
            s.received = 0;
            if !is_known(s.last.msg_type) {
                return Err(ChunkError::UnknownMessageType);
            }
            let whole = !passing || s.last.msg_type <= LAST_CONTROL_TYPE;
            if whole && s.last.len > MAX_MESSAGE_LEN {
                return Err(ChunkError::MessageTooLarge);
            }
            s.mode = if whole {
                Mode::Buffer(Vec::new())
            } else {
                self.writer.start(&header(&s.last), out);
                Mode::Pass
            };
        } else if matches!(s.mode, Mode::Pass) {
            if self.chunk_size != self.writer.chunk_size {
                return Err(ChunkError::ChunkSizeMismatch);
            }
            self.writer.continuation(csid, out);
        }
        let remaining = self.chunk_size.min(s.last.len.saturating_sub(s.received));
        if remaining == 0 {
            return self.complete(slot, out, judge);
        }
        self.state = State::Body { slot, remaining };
        Ok(None)
    }

    /// A message has all its bytes.
    fn complete(
        &mut self,
        slot: usize,
        out: &mut Vec<u8>,
        judge: &mut dyn FnMut(&Header, &[u8]) -> Judgement,
    ) -> Result<Option<Phase>, ChunkError> {
        let s = self
            .streams
            .get_mut(slot)
            .ok_or(ChunkError::UnknownChunkStream)?;
        s.received = 0;
        let Mode::Buffer(payload) = std::mem::replace(&mut s.mode, Mode::Pass) else {
            return Ok(None);
        };
        let h = header(&s.last);
        match h.msg_type {
            MSG_SET_CHUNK_SIZE => {
                let size = be32(&payload).ok_or(ChunkError::BadControlMessage)?;
                if size == 0 || size > 0x7FFF_FFFF {
                    return Err(ChunkError::BadChunkSize);
                }
                self.chunk_size = size;
            }
            MSG_ABORT => {
                let csid = be32(&payload).ok_or(ChunkError::BadControlMessage)?;
                if let Some(s) = self.streams.iter_mut().find(|s| s.last.csid == csid) {
                    // Forwarded below, so the client drops its part too.
                    s.received = 0;
                    s.mode = Mode::Pass;
                }
            }
            _ => {}
        }
        let Some(held) = &mut self.held else {
            self.writer.message(&h, &payload, out);
            return Ok(None);
        };
        match judge(&h, &payload) {
            Judgement::Drop => {}
            Judgement::Forward => self.writer.message(&h, &payload, held),
            Judgement::Accept => {
                self.writer.message(&h, &payload, held);
                out.append(held);
                self.held = None;
            }
            Judgement::Refuse => return Ok(Some(Phase::Refused)),
        }
        if self.held.as_ref().is_some_and(|h| h.len() > MAX_HELD) {
            return Err(ChunkError::MessageTooLarge);
        }
        Ok(None)
    }
}

fn new_header() -> State {
    State::Header {
        buf: [0; MAX_HEADER_LEN],
        len: 0,
    }
}

fn header(last: &Last) -> Header {
    Header {
        csid: last.csid,
        timestamp: last.timestamp,
        len: last.len,
        msg_type: last.msg_type,
        msid: last.msid,
    }
}

/// The state after a header that starts a message, given the one before.
fn next_header(prev: &Last, fmt: u8, rest: &[u8]) -> Last {
    let byte = |i: usize| rest.get(i).copied().unwrap_or_default();
    let mut next = *prev;
    (next.timestamp, next.field) =
        timestamp_after(prev.timestamp, prev.field, prev.extended(), fmt, rest);
    if fmt <= 1 {
        next.len = be24(rest.get(3..).unwrap_or_default());
        next.msg_type = byte(6);
    }
    if fmt == 0 {
        next.msid = u32::from_le_bytes([byte(7), byte(8), byte(9), byte(10)]);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::super::chunk::testutil::{basic, message, set_chunk_size};
    use super::*;

    /// A fresh writer writes a type 0 chunk and type 3 continuations, the
    /// extended timestamp on every one when needed: what ffmpeg writes.
    #[test]
    fn a_fresh_writer_writes_what_the_test_builder_does() {
        let p: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        for csid in [2, 3, 63, 64, 319, 320, 65599] {
            for ts in [0, 0xFF_FFFE, 0xFF_FFFF, 0x1234_5678] {
                for size in [1, 60, 128, 300, 4096] {
                    let h = Header {
                        csid,
                        timestamp: ts,
                        len: 300,
                        msg_type: 20,
                        msid: 1,
                    };
                    let mut out = Vec::new();
                    ChunkWriter::with_chunk_size(size).message(&h, &p, &mut out);
                    assert_eq!(out, message(csid, 20, ts, &p, size as usize));
                }
            }
        }
        let h = Header {
            csid: 3,
            timestamp: 0,
            len: 0,
            msg_type: 20,
            msid: 7,
        };
        let mut out = Vec::new();
        ChunkWriter::default().message(&h, b"", &mut out);
        assert_eq!(out, [3, 0, 0, 0, 0, 0, 0, 20, 7, 0, 0, 0]);
    }

    /// Decodes a chunk stream the way a client does, into (header, payload).
    fn client_view(bytes: &[u8]) -> Vec<(Header, Vec<u8>)> {
        let mut r = Rechunker::new(ChunkWriter::default(), true);
        let mut seen = Vec::new();
        let mut out = Vec::new();
        r.feed(bytes, &mut out, &mut |h, p| {
            seen.push((*h, p.to_vec()));
            Judgement::Forward
        })
        .unwrap();
        seen
    }

    fn h(csid: u32, timestamp: u32, len: usize, msg_type: u8, msid: u32) -> Header {
        Header {
            csid,
            timestamp,
            len: len as u32,
            msg_type,
            msid,
        }
    }

    /// A server stream: type 0 on csid 6, then type 1, 2 and 3 headers.
    fn server_stream() -> Vec<u8> {
        let mut b = message(6, 9, 1000, &[1; 300], 128);
        // Type 1: delta 40, len 10, type 8.
        b.extend([0x46, 0, 0, 40, 0, 0, 10, 8]);
        b.extend([2; 10]);
        // Type 2: delta 20, same len and type.
        b.extend([0x86, 0, 0, 20]);
        b.extend([3; 10]);
        // Type 3 starting a message: adds the last delta (20) again.
        b.push(0xc6);
        b.extend([4; 10]);
        b
    }

    #[test]
    fn the_decoder_reads_timestamps_as_ffmpeg_and_nginx_do() {
        let got = client_view(&server_stream());
        let heads: Vec<_> = got.iter().map(|(h, _)| *h).collect();
        assert_eq!(
            heads,
            vec![
                h(6, 1000, 300, 9, 1),
                h(6, 1040, 10, 8, 1),
                h(6, 1060, 10, 8, 1),
                h(6, 1080, 10, 8, 1)
            ]
        );
        assert_eq!(got[3].1, vec![4; 10]);
    }

    /// What the client decodes from the proxy's output equals what the
    /// proxy decoded from the server, even after the proxy wrote its own
    /// message on the same chunk stream and dropped one of the server's.
    #[test]
    fn rewritten_headers_decode_to_the_same_messages() {
        let mut writer = ChunkWriter::default();
        let mut out = Vec::new();
        // The proxy's own answer on csid 6, which the server never wrote.
        writer.message(&h(6, 0, 5, 20, 0), b"hello", &mut out);
        let mine = out.len();
        let mut r = Rechunker::new(writer, true);
        let mut n = 0;
        let stream = server_stream();
        for piece in stream.chunks(7) {
            r.feed(piece, &mut out, &mut |_, _| {
                n += 1;
                // Drop the first server message, accept at the second.
                match n {
                    1 => Judgement::Drop,
                    2 => Judgement::Accept,
                    _ => Judgement::Forward,
                }
            })
            .unwrap();
        }
        let seen = client_view(&out);
        let heads: Vec<_> = seen.iter().map(|(h, _)| *h).collect();
        assert_eq!(
            heads,
            vec![
                h(6, 0, 5, 20, 0),
                h(6, 1040, 10, 8, 1),
                h(6, 1060, 10, 8, 1),
                h(6, 1080, 10, 8, 1)
            ]
        );
        assert_eq!(seen[1].1, vec![2; 10]);
        assert!(out.len() > mine);
    }

    #[test]
    fn media_passes_chunk_for_chunk_after_the_server_s_chunk_size() {
        let video: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut server = set_chunk_size(4096);
        server.extend(message(7, 9, 0x0100_0000, &video, 4096));
        server.extend(message(7, 9, 0x0100_0021, &video, 4096));
        let mut r = Rechunker::new(ChunkWriter::default(), false);
        let mut out = Vec::new();
        for piece in server.chunks(1000) {
            let phase = r.feed(piece, &mut out, &mut |_, _| unreachable!()).unwrap();
            assert_eq!(phase, Phase::Passing);
        }
        let seen = client_view(&out);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1], (h(7, 0x0100_0000, 10_000, 9, 1), video.clone()));
        assert_eq!(seen[2], (h(7, 0x0100_0021, 10_000, 9, 1), video));
        // The second video message needs no extended timestamp as a delta.
        assert!(out.len() < server.len(), "{} {}", out.len(), server.len());
    }

    #[test]
    fn a_refusal_stops_the_feed_and_nothing_held_is_written() {
        let mut b = message(3, 20, 0, b"answer", 128);
        b.extend(message(3, 20, 0, b"refusal", 128));
        let mut r = Rechunker::new(ChunkWriter::default(), true);
        let mut out = Vec::new();
        let phase = r
            .feed(&b, &mut out, &mut |_, p| {
                if p == b"refusal" {
                    Judgement::Refuse
                } else {
                    Judgement::Forward
                }
            })
            .unwrap();
        assert_eq!(phase, Phase::Refused);
        assert!(out.is_empty());
    }

    #[test]
    fn errors_and_bounds() {
        let mut r = Rechunker::new(ChunkWriter::default(), true);
        let mut out = Vec::new();
        let mut fwd = |_: &Header, _: &[u8]| Judgement::Forward;
        assert_eq!(
            r.feed(&[0xc3], &mut out, &mut fwd),
            Err(ChunkError::UnknownChunkStream)
        );
        // Held back past MAX_HELD without a verdict.
        let mut r = Rechunker::new(ChunkWriter::default(), true);
        let big = message(3, 18, 0, &vec![0; 60_000], 128);
        let mut b = big.clone();
        b.extend(&big);
        assert_eq!(
            r.feed(&b, &mut out, &mut fwd),
            Err(ChunkError::MessageTooLarge)
        );
        // A passing message cut by a new one on its chunk stream.
        let mut r = Rechunker::new(ChunkWriter::default(), false);
        let mut b = message(6, 9, 0, &[0; 300], 128)[..140].to_vec();
        b.extend(message(6, 9, 0, &[0; 3], 128));
        assert_eq!(
            r.feed(&b, &mut out, &mut fwd),
            Err(ChunkError::InterruptedMessage)
        );
        assert_eq!(basic(0, 320), {
            let mut v = Vec::new();
            basic_header(0, 320, &mut v);
            v
        });
    }

    /// xorshift64*: arbitrary input without a rand dependency.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..2000 {
            let mut bytes = Vec::new();
            for _ in 0..(round % 300) {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                bytes.push((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8);
            }
            let mut r = Rechunker::new(ChunkWriter::default(), round % 2 == 0);
            let mut out = Vec::new();
            let _ = r.feed(&bytes, &mut out, &mut |_, _| Judgement::Accept);
        }
    }
}
