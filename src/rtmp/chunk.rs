//! RTMP chunk stream decoding (spec section 5.3 "Chunking" and 5.4.1/5.4.2,
//! the chunk-layer protocol control messages).
//!
//! This layer gives bytes no meaning beyond framing: it reassembles messages
//! from interleaved chunks and hands out the payload of the few message types
//! the layers above need. Everything else (audio, video, data, user control,
//! acknowledgements) is skipped by counting bytes, never buffered.

/// Chunk size in force until the peer sends Set Chunk Size (spec 5.4.1).
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest message we are willing to reassemble. Commands are small; a larger
/// one is either hostile or not something an ingest balancer should buffer.
pub const MAX_MESSAGE_LEN: u32 = 64 * 1024;
/// Chunk streams tracked at once. Real clients use a handful (ffmpeg: 2..=8).
pub const MAX_CHUNK_STREAMS: usize = 16;

/// Message type ids (spec 5.4 and 7.1).
pub const MSG_SET_CHUNK_SIZE: u8 = 1;
pub const MSG_ABORT: u8 = 2;
pub const MSG_COMMAND_AMF3: u8 = 17;
pub const MSG_COMMAND_AMF0: u8 = 20;

/// Basic header (up to 3) + type 0 message header (11) + extended timestamp (4).
pub(crate) const MAX_HEADER_LEN: usize = 18;
/// Timestamp field value announcing an Extended Timestamp (spec 5.3.1.3).
pub(crate) const EXTENDED_TS: u32 = 0xFF_FFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A type 2 or 3 header on a chunk stream that never had a full header,
    /// so its message length and type are unknown.
    UnknownChunkStream,
    TooManyChunkStreams,
    MessageTooLarge,
    /// A message type id the spec doesn't define: not RTMP, or misframed.
    UnknownMessageType,
    /// Set Chunk Size of 0 or with the reserved top bit set.
    BadChunkSize,
    /// Set Chunk Size / Abort payload shorter than its 4 bytes.
    BadControlMessage,
    /// A new message on a chunk stream whose message was partly passed on.
    InterruptedMessage,
    /// A chunk passed on at a size the reader of it does not use.
    ChunkSizeMismatch,
}

impl ChunkError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnknownChunkStream => "unknown_chunk_stream",
            Self::TooManyChunkStreams => "too_many_chunk_streams",
            Self::MessageTooLarge => "message_too_large",
            Self::UnknownMessageType => "bad_message_type",
            Self::BadChunkSize => "bad_chunk_size",
            Self::BadControlMessage => "bad_control_message",
            Self::InterruptedMessage => "interrupted_message",
            Self::ChunkSizeMismatch => "chunk_size_mismatch",
        }
    }
}

/// A reassembled message of a type the upper layers asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub msg_type: u8,
    pub payload: &'a [u8],
}

/// How the message last returned by [`ChunkDecoder::next`] sat in the
/// chunk stream, for a caller that rewrites that one message and copies
/// every other byte (see `Front::rename`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Offset of its first chunk header, counting every byte the decoder
    /// was given since it was created.
    pub start: u64,
    /// Offset just past its last byte: `start..end` holds all its chunks.
    pub end: u64,
    /// No chunk of another chunk stream lies inside `start..end`, so the
    /// range holds this message's chunks and nothing else.
    pub contiguous: bool,
    pub csid: u32,
    /// Message stream id, from the last type 0 header on `csid` (0 if the
    /// chunk stream started with a type 1 header).
    pub msid: u32,
    /// Absolute timestamp, as ffmpeg and nginx-rtmp compute it: type 0
    /// sets it, types 1 and 2 add their delta, a type 3 header starting a
    /// message adds the last timestamp field again.
    pub timestamp: u32,
    pub msg_type: u8,
    /// Chunk size in force when the message completed; for a contiguous
    /// message, the one its chunks were cut at (a Set Chunk Size in between
    /// would be a chunk of chunk stream 2 inside the range).
    pub chunk_size: u32,
}

/// Per chunk stream id state: headers of type 1/2/3 inherit fields from the
/// previous header on the same csid (spec 5.3.1.2), and each csid has its own
/// in-progress message, since chunks of different csids interleave.
struct ChunkStream {
    csid: u32,
    msg_len: u32,
    msg_type: u8,
    /// The last type 0/1/2 header had the 0xFFFFFF marker, so type 3 chunks
    /// on this csid carry a 4-byte extended timestamp too (as ffmpeg and
    /// nginx-rtmp write and read them).
    extended_ts: bool,
    /// Bytes of the current message seen so far; 0 means between messages.
    received: u32,
    /// Only filled for buffered types; grows as bytes arrive.
    payload: Vec<u8>,
    /// Absolute timestamp of the current message: type 0 sets it, types
    /// 1 and 2 add their delta, and a type 3 header that starts a message
    /// adds the last timestamp field again (absolute after a type 0), as
    /// ffmpeg, librtmp and nginx-rtmp read it (and as [`super::rechunk`]).
    timestamp: u32,
    /// The last timestamp field: absolute after type 0, a delta otherwise.
    ts_field: u32,
    msid: u32,
    /// Input offset of the current message's first chunk header.
    start: u64,
    /// No other chunk stream's chunk came since `start`.
    contiguous: bool,
}

enum State {
    /// Collecting a chunk header; its length is only known piecewise.
    Header {
        buf: [u8; MAX_HEADER_LEN],
        len: usize,
    },
    /// Inside a chunk's payload for the stream at `slot`.
    Body { slot: usize, remaining: u32 },
}

enum Step {
    NeedMore,
    Continue,
    Message(u8),
}

pub struct ChunkDecoder {
    chunk_size: u32,
    streams: Vec<ChunkStream>,
    state: State,
    /// Payload of the message last returned by `next`.
    done: Vec<u8>,
    /// Bytes consumed so far: the offsets of [`Framing`].
    pos: u64,
    /// Slot of the chunk stream of the last chunk header, to tell whether
    /// a continuation chunk follows its own chunk stream's previous chunk.
    last_slot: Option<usize>,
    /// Of the message last returned by `next`.
    framing: Option<Framing>,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

fn is_buffered(msg_type: u8) -> bool {
    matches!(
        msg_type,
        MSG_SET_CHUNK_SIZE | MSG_ABORT | MSG_COMMAND_AMF3 | MSG_COMMAND_AMF0
    )
}

/// Types of spec sections 5.4, 6.2 and 7.1 (22 = aggregate).
pub(crate) fn is_known(msg_type: u8) -> bool {
    matches!(msg_type, 1..=6 | 8 | 9 | 15..=20 | 22)
}

pub(crate) fn be24(b: &[u8]) -> u32 {
    b.iter()
        .take(3)
        .fold(0, |acc, &x| (acc << 8) | u32::from(x))
}

pub(crate) fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

impl ChunkDecoder {
    pub fn new() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: Vec::new(),
            state: State::Header {
                buf: [0; MAX_HEADER_LEN],
                len: 0,
            },
            done: Vec::new(),
            pos: 0,
            last_slot: None,
            framing: None,
        }
    }

    /// Chunk size the peer's chunks are cut at now.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Where the message last returned by [`Self::next`] was, and its
    /// header fields; `None` before the first.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// Consumes bytes from `input` until a message of a buffered type
    /// (commands) is complete or `input` is exhausted. Set Chunk Size and
    /// Abort are applied here and not returned.
    pub fn next(&mut self, input: &mut &[u8]) -> Result<Option<Message<'_>>, ChunkError> {
        loop {
            match self.step(input)? {
                Step::NeedMore => return Ok(None),
                Step::Continue => {}
                Step::Message(msg_type) => {
                    return Ok(Some(Message {
                        msg_type,
                        payload: &self.done,
                    }));
                }
            }
        }
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Step, ChunkError> {
        match &mut self.state {
            State::Header { buf, len } => loop {
                let streams = &self.streams;
                let need = header_len(buf.get(..*len).unwrap_or_default(), |csid| {
                    streams.iter().any(|s| s.csid == csid && s.extended_ts)
                });
                if *len >= need {
                    let hdr = *buf;
                    return self.on_header(hdr.get(..need).unwrap_or_default());
                }
                let n = need.saturating_sub(*len).min(input.len());
                if n == 0 {
                    return Ok(Step::NeedMore);
                }
                let (head, rest) = input.split_at_checked(n).unwrap_or((input, &[]));
                let end = len.saturating_add(n);
                if let Some(dst) = buf.get_mut(*len..end) {
                    dst.copy_from_slice(head);
                }
                *len = end;
                *input = rest;
                // Saturating: 2^64 bytes never come, and offsets past that
                // only make a rewrite refuse (the range no longer fits).
                self.pos = self
                    .pos
                    .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            },
            State::Body { slot, remaining } => {
                let slot = *slot;
                let n = (*remaining).min(u32::try_from(input.len()).unwrap_or(u32::MAX));
                if n == 0 {
                    return Ok(Step::NeedMore);
                }
                let (head, rest) = input.split_at_checked(n as usize).unwrap_or((input, &[]));
                *input = rest;
                *remaining = remaining.saturating_sub(n);
                self.pos = self.pos.saturating_add(u64::from(n));
                let chunk_done = *remaining == 0;
                let Some(s) = self.streams.get_mut(slot) else {
                    return Err(ChunkError::UnknownChunkStream);
                };
                if is_buffered(s.msg_type) {
                    s.payload.extend_from_slice(head);
                }
                s.received = s.received.saturating_add(n);
                if !chunk_done {
                    return Ok(Step::Continue);
                }
                self.state = new_header_state();
                if s.received >= s.msg_len {
                    return self.finish(slot);
                }
                Ok(Step::Continue)
            }
        }
    }

    fn on_header(&mut self, hdr: &[u8]) -> Result<Step, ChunkError> {
        self.state = new_header_state();
        let (fmt, csid, rest) = parse_basic_header(hdr);
        let slot = match self.streams.iter().position(|s| s.csid == csid) {
            Some(slot) => slot,
            // Type 1 carries length and type, enough to frame a message even
            // without the message stream id from a type 0.
            None if fmt <= 1 => {
                if self.streams.len() >= MAX_CHUNK_STREAMS {
                    return Err(ChunkError::TooManyChunkStreams);
                }
                self.streams.push(ChunkStream {
                    csid,
                    msg_len: 0,
                    msg_type: 0,
                    extended_ts: false,
                    received: 0,
                    payload: Vec::new(),
                    timestamp: 0,
                    ts_field: 0,
                    msid: 0,
                    start: 0,
                    contiguous: true,
                });
                self.streams.len().saturating_sub(1)
            }
            None => return Err(ChunkError::UnknownChunkStream),
        };
        let after_slot = self.last_slot.replace(slot);
        let Some(s) = self.streams.get_mut(slot) else {
            return Err(ChunkError::UnknownChunkStream);
        };
        // Checked before `received` is reset below: a type 3 header with
        // bytes of the message already in continues it, any other header
        // starts a message.
        let starts = fmt < 3 || s.received == 0;
        if starts {
            // The whole header was just consumed: `pos` is its end.
            let hdr_len = u64::try_from(hdr.len()).unwrap_or(u64::MAX);
            s.start = self.pos.saturating_sub(hdr_len);
            s.contiguous = true;
            next_timestamp(s, fmt, rest);
        } else if after_slot != Some(slot) {
            s.contiguous = false;
        }
        if fmt < 3 {
            // A full header mid-message is a protocol violation; like ffmpeg,
            // drop the partial message rather than fail the connection.
            s.received = 0;
            s.payload.clear();
            s.extended_ts = be24(rest) == EXTENDED_TS;
            if fmt <= 1 {
                s.msg_len = be24(rest.get(3..).unwrap_or_default());
                s.msg_type = rest.get(6).copied().unwrap_or_default();
                if !is_known(s.msg_type) {
                    return Err(ChunkError::UnknownMessageType);
                }
            }
        }
        if s.received == 0 && is_buffered(s.msg_type) && s.msg_len > MAX_MESSAGE_LEN {
            return Err(ChunkError::MessageTooLarge);
        }
        let remaining = self.chunk_size.min(s.msg_len.saturating_sub(s.received));
        if remaining == 0 {
            // Zero-length message: complete with its header.
            return self.finish(slot);
        }
        self.state = State::Body { slot, remaining };
        Ok(Step::Continue)
    }

    fn finish(&mut self, slot: usize) -> Result<Step, ChunkError> {
        let Some(s) = self.streams.get_mut(slot) else {
            return Err(ChunkError::UnknownChunkStream);
        };
        s.received = 0;
        let msg_type = s.msg_type;
        let payload = std::mem::take(&mut s.payload);
        match msg_type {
            MSG_SET_CHUNK_SIZE => {
                let size = be32(&payload).ok_or(ChunkError::BadControlMessage)?;
                // Spec 5.4.1: 1..=0x7FFFFFFF. Huge values are harmless since
                // a chunk never exceeds its message and we never allocate by it.
                if size == 0 || size > 0x7FFF_FFFF {
                    return Err(ChunkError::BadChunkSize);
                }
                self.chunk_size = size;
                Ok(Step::Continue)
            }
            MSG_ABORT => {
                let csid = be32(&payload).ok_or(ChunkError::BadControlMessage)?;
                if let Some(s) = self.streams.iter_mut().find(|s| s.csid == csid) {
                    s.received = 0;
                    s.payload.clear();
                }
                Ok(Step::Continue)
            }
            MSG_COMMAND_AMF0 | MSG_COMMAND_AMF3 => {
                self.framing = Some(Framing {
                    start: s.start,
                    end: self.pos,
                    contiguous: s.contiguous,
                    csid: s.csid,
                    msid: s.msid,
                    timestamp: s.timestamp,
                    msg_type,
                    chunk_size: self.chunk_size,
                });
                self.done = payload;
                Ok(Step::Message(msg_type))
            }
            _ => Ok(Step::Continue),
        }
    }
}

/// Updates the timestamp fields of `s` for a header of type `fmt` that
/// starts a message; `rest` is the header after its basic header.
fn next_timestamp(s: &mut ChunkStream, fmt: u8, rest: &[u8]) {
    (s.timestamp, s.ts_field) = timestamp_after(s.timestamp, s.ts_field, s.extended_ts, fmt, rest);
    if fmt == 0 {
        let byte = |i: usize| rest.get(i).copied().unwrap_or_default();
        s.msid = u32::from_le_bytes([byte(7), byte(8), byte(9), byte(10)]);
    }
}

/// The absolute timestamp and the timestamp field after a header of type
/// `fmt` that starts a message, given those before it; `rest` is the
/// header after its basic header, and `extended` says whether type 3
/// headers on its chunk stream carry 4 more bytes. Type 0 sets the
/// timestamp, types 1 and 2 add their delta, and a type 3 header adds the
/// last field again (absolute after a type 0), as ffmpeg, librtmp and
/// nginx-rtmp read it. The decoder and the rechunker both use it, so they
/// agree.
pub(crate) fn timestamp_after(
    timestamp: u32,
    field: u32,
    extended: bool,
    fmt: u8,
    rest: &[u8],
) -> (u32, u32) {
    // The 24-bit field, or the extended timestamp after the message header
    // (at `ext_at`) when the field says so.
    let field_at = |ext_at: usize| {
        let short = be24(rest);
        if short == EXTENDED_TS {
            be32(rest.get(ext_at..).unwrap_or_default()).unwrap_or(short)
        } else {
            short
        }
    };
    let field = match fmt {
        0 => return (field_at(11), field_at(11)),
        1 => field_at(7),
        2 => field_at(3),
        _ if extended => be32(rest).unwrap_or(field),
        _ => field,
    };
    // Timestamps wrap (spec 5.3.1.3 arithmetic is modulo 2^32).
    (timestamp.wrapping_add(field), field)
}

fn new_header_state() -> State {
    State::Header {
        buf: [0; MAX_HEADER_LEN],
        len: 0,
    }
}

/// Basic header (spec 5.3.1.1): fmt in the top 2 bits; csid 2..=63 inline,
/// or 0 / 1 meaning one / two more bytes (csid 64..=319 / 64..=65599).
fn basic_header_len(b0: u8) -> usize {
    match b0 & 0x3f {
        0 => 2,
        1 => 3,
        _ => 1,
    }
}

pub(crate) fn parse_basic_header(hdr: &[u8]) -> (u8, u32, &[u8]) {
    let b = |i: usize| u32::from(hdr.get(i).copied().unwrap_or_default());
    let b0 = hdr.first().copied().unwrap_or_default();
    let len = basic_header_len(b0);
    let csid = match len {
        2 => b(1).saturating_add(64),
        3 => (b(2) << 8 | b(1)).saturating_add(64),
        _ => u32::from(b0 & 0x3f),
    };
    (b0 >> 6, csid, hdr.get(len..).unwrap_or_default())
}

/// Total length of the chunk header starting with `hdr`, as far as the
/// bytes seen so far tell. Callers top `hdr` up to the returned length and
/// ask again until the answer stops growing; it never shrinks.
pub(crate) fn header_len(hdr: &[u8], extended_on: impl Fn(u32) -> bool) -> usize {
    let Some(&b0) = hdr.first() else { return 1 };
    let basic = basic_header_len(b0);
    if hdr.len() < basic {
        return basic;
    }
    let (fmt, csid, rest) = parse_basic_header(hdr);
    let msg_header = match fmt {
        0 => 11,
        1 => 7,
        2 => 3,
        _ => 0,
    };
    let extended = if fmt == 3 {
        extended_on(csid)
    } else {
        rest.len() >= 3 && be24(rest) == EXTENDED_TS
    };
    let ext_len = if extended { 4 } else { 0 };
    basic.saturating_add(msg_header).saturating_add(ext_len)
}

/// Builders for hand-made chunk streams, shared by the tests of all layers.
#[cfg(test)]
pub(crate) mod testutil {
    /// Basic header for any csid, picking the shortest form.
    pub fn basic(fmt: u8, csid: u32) -> Vec<u8> {
        match csid {
            2..=63 => vec![(fmt << 6) | csid as u8],
            64..=319 => vec![fmt << 6, (csid - 64) as u8],
            _ => vec![(fmt << 6) | 1, (csid - 64) as u8, ((csid - 64) >> 8) as u8],
        }
    }

    /// One message as a type 0 chunk followed by type 3 continuations,
    /// writing the extended timestamp on every chunk when `ts` needs it.
    pub fn message(csid: u32, msg_type: u8, ts: u32, payload: &[u8], chunk_size: usize) -> Vec<u8> {
        let ext = ts >= 0xFF_FFFF;
        let mut out = basic(0, csid);
        out.extend_from_slice(&ts.min(0xFF_FFFF).to_be_bytes()[1..]);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.push(msg_type);
        out.extend_from_slice(&1u32.to_le_bytes());
        for (i, chunk) in payload.chunks(chunk_size).enumerate() {
            if i > 0 {
                out.extend(basic(3, csid));
            }
            if ext {
                out.extend_from_slice(&ts.to_be_bytes());
            }
            out.extend_from_slice(chunk);
        }
        if payload.is_empty() && ext {
            out.extend_from_slice(&ts.to_be_bytes());
        }
        out
    }

    pub fn set_chunk_size(size: u32) -> Vec<u8> {
        message(2, super::MSG_SET_CHUNK_SIZE, 0, &size.to_be_bytes(), 128)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    /// Feeds `bytes` in pieces of `step` and collects (type, payload) pairs.
    fn decode(bytes: &[u8], step: usize) -> Result<Vec<(u8, Vec<u8>)>, ChunkError> {
        let mut d = ChunkDecoder::new();
        let mut out = Vec::new();
        for mut piece in bytes.chunks(step.max(1)) {
            while let Some(m) = d.next(&mut piece)? {
                out.push((m.msg_type, m.payload.to_vec()));
            }
            assert!(piece.is_empty());
        }
        Ok(out)
    }

    fn all_steps(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, ChunkError> {
        let whole = decode(bytes, bytes.len());
        for step in [1, 2, 3, 5, 7, 13, 64] {
            assert_eq!(decode(bytes, step), whole, "step {step}");
        }
        whole
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn multi_chunk_message_default_size() {
        let p = payload(300);
        let bytes = message(3, 20, 0, &p, 128);
        assert_eq!(all_steps(&bytes), Ok(vec![(20, p)]));
    }

    #[test]
    fn chunk_size_change_mid_stream() {
        let (a, b) = (payload(200), payload(5000));
        let mut bytes = message(3, 20, 0, &a, 128);
        bytes.extend(set_chunk_size(4096));
        bytes.extend(message(3, 20, 0, &b, 4096));
        // Another message still at 128 would be misframed: check it isn't used.
        assert_eq!(all_steps(&bytes), Ok(vec![(20, a), (20, b)]));
    }

    #[test]
    fn extended_timestamp_on_type0_and_type3() {
        let p = payload(400);
        for ts in [0xFF_FFFF, 0x1234_5678] {
            let bytes = message(5, 20, ts, &p, 128);
            // 12 header + 4 ext, then 3 x (1 + 4 ext) continuation headers.
            assert_eq!(bytes.len(), 400 + 16 + 3 * 5);
            assert_eq!(all_steps(&bytes), Ok(vec![(20, p.clone())]));
        }
    }

    #[test]
    fn extended_timestamp_on_type1_and_type2() {
        let p = payload(10);
        let mut bytes = message(4, 20, 0, &p, 128);
        // Type 1: delta 0xFFFFFF + ext, len 10, type 20.
        bytes.extend([0x44, 0xff, 0xff, 0xff, 0, 0, 10, 20, 0, 0, 0, 9]);
        bytes.extend(&p);
        // Type 2 with ext, then a type 3 starting a new message (also ext).
        bytes.extend([0x84, 0xff, 0xff, 0xff, 0, 0, 0, 9]);
        bytes.extend(&p);
        bytes.extend([0xc4, 0, 0, 0, 9]);
        bytes.extend(&p);
        assert_eq!(all_steps(&bytes), Ok(vec![(20, p.clone()); 4]));
    }

    #[test]
    fn interleaved_chunk_streams() {
        let (a, b) = (payload(300), payload(250));
        let ma = message(3, 20, 0, &a, 128);
        let mb = message(8, 17, 0, &b, 128);
        // Type 0 header (12 bytes) + 128, then type 3 (1) + 128, ...
        let mut bytes = Vec::new();
        bytes.extend(&ma[..140]);
        bytes.extend(&mb[..140]);
        bytes.extend(&ma[140..269]);
        bytes.extend(&mb[140..]);
        bytes.extend(&ma[269..]);
        assert_eq!(all_steps(&bytes), Ok(vec![(17, b), (20, a)]));
    }

    #[test]
    fn two_and_three_byte_csids() {
        let p = payload(150);
        for csid in [64, 319, 320, 65599] {
            let bytes = message(csid, 20, 0, &p, 128);
            assert_eq!(all_steps(&bytes), Ok(vec![(20, p.clone())]), "csid {csid}");
        }
        assert_eq!(basic(0, 320), vec![1, 0, 1]);
    }

    #[test]
    fn abort_discards_partial_message() {
        let a = payload(300);
        let ma = message(3, 20, 0, &a, 128);
        let mut bytes = ma[..140].to_vec();
        bytes.extend(message(2, MSG_ABORT, 0, &3u32.to_be_bytes(), 128));
        // A type 3 chunk now starts a new message (same length and type)
        // instead of continuing the aborted one.
        bytes.push(0xc3);
        bytes.extend(&ma[12..]);
        assert_eq!(all_steps(&bytes), Ok(vec![(20, a)]));
    }

    #[test]
    fn media_is_skipped_not_buffered() {
        let video = payload(200_000);
        let mut bytes = message(6, 9, 0, &video, 128);
        bytes.extend(message(3, 20, 0, b"x", 128));
        let mut d = ChunkDecoder::new();
        let mut input = &bytes[..bytes.len() - 13];
        assert_eq!(d.next(&mut input), Ok(None));
        assert!(d.streams.iter().all(|s| s.payload.capacity() == 0));
        assert_eq!(all_steps(&bytes), Ok(vec![(20, b"x".to_vec())]));
    }

    #[test]
    fn errors() {
        // Command larger than the cap: rejected at the header, nothing read.
        let big = message(3, 20, 0, &payload(MAX_MESSAGE_LEN as usize + 1), 128);
        assert_eq!(all_steps(&big[..12]), Err(ChunkError::MessageTooLarge));
        assert_eq!(
            all_steps(&[0x83, 0, 0, 0]),
            Err(ChunkError::UnknownChunkStream)
        );
        assert_eq!(all_steps(&[0xc3]), Err(ChunkError::UnknownChunkStream));
        assert_eq!(
            all_steps(&message(3, 7, 0, b"", 128)),
            Err(ChunkError::UnknownMessageType)
        );
        assert_eq!(all_steps(&set_chunk_size(0)), Err(ChunkError::BadChunkSize));
        assert_eq!(
            all_steps(&set_chunk_size(0x8000_0000)),
            Err(ChunkError::BadChunkSize)
        );
        assert_eq!(
            all_steps(&message(2, MSG_SET_CHUNK_SIZE, 0, &[1, 2], 128)),
            Err(ChunkError::BadControlMessage)
        );
        let many: Vec<u8> = (3..3 + MAX_CHUNK_STREAMS as u32 + 1)
            .flat_map(|c| message(c, 9, 0, b"v", 128))
            .collect();
        assert_eq!(all_steps(&many), Err(ChunkError::TooManyChunkStreams));
    }

    /// Feeds `bytes` in pieces of `step`, collecting the framing of every
    /// command message.
    fn framings(bytes: &[u8], step: usize) -> Vec<Framing> {
        let mut d = ChunkDecoder::new();
        let mut out = Vec::new();
        for mut piece in bytes.chunks(step.max(1)) {
            while d.next(&mut piece).unwrap().is_some() {
                out.push(d.framing().unwrap());
            }
        }
        out
    }

    fn all_framings(bytes: &[u8]) -> Vec<Framing> {
        let whole = framings(bytes, bytes.len());
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(framings(bytes, step), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn framing_ranges_and_contiguity() {
        let (a, b, c) = (payload(300), payload(250), payload(300));
        let ma = message(3, 20, 0, &a, 128);
        let mb = message(8, 17, 0, &b, 128);
        let mut bytes = Vec::new();
        bytes.extend(&ma[..140]);
        bytes.extend(&mb[..140]);
        bytes.extend(&ma[140..269]);
        bytes.extend(&mb[140..]);
        bytes.extend(&ma[269..]);
        let c_start = bytes.len() as u64;
        // Media between messages does not break the next one's contiguity.
        bytes.extend(message(6, 9, 0, &payload(200), 128));
        let c_start_after_media = bytes.len() as u64;
        bytes.extend(message(5, 20, 77, &c, 128));
        assert!(c_start < c_start_after_media);
        let f = all_framings(&bytes);
        let want = |start, end, contiguous, csid, ts, msg_type| Framing {
            start,
            end,
            contiguous,
            csid,
            msid: 1,
            timestamp: ts,
            msg_type,
            chunk_size: 128,
        };
        assert_eq!(
            f,
            vec![
                want(140, 140 + mb.len() as u64 + 129, false, 8, 0, 17),
                want(0, c_start, false, 3, 0, 20),
                want(c_start_after_media, bytes.len() as u64, true, 5, 77, 20),
            ]
        );
        assert_eq!(ChunkDecoder::new().framing(), None);
    }

    #[test]
    fn framing_timestamps_by_header_type() {
        let p = payload(10);
        let mut bytes = message(4, 20, 1000, &p, 128);
        // Type 1: delta 10, len 10, type 20.
        bytes.extend([0x44, 0, 0, 10, 0, 0, 10, 20]);
        bytes.extend(&p);
        // Type 2: delta 5.
        bytes.extend([0x84, 0, 0, 5]);
        bytes.extend(&p);
        // Type 3 starting a message: adds the last delta again.
        bytes.push(0xc4);
        bytes.extend(&p);
        // Extended: absolute 0x1234_5678, then a type 3 message adding it again.
        let ext = message(4, 20, 0x1234_5678, &p, 128);
        let ext_start = bytes.len() as u64;
        bytes.extend(&ext);
        bytes.extend([0xc4, 0x12, 0x34, 0x56, 0x78]);
        bytes.extend(&p);
        // Type 2 with an extended delta.
        bytes.extend([0x84, 0xff, 0xff, 0xff, 0, 0, 0, 9]);
        bytes.extend(&p);
        let got: Vec<_> = all_framings(&bytes)
            .iter()
            .map(|f| (f.timestamp, f.start, f.end - f.start))
            .collect();
        assert_eq!(
            got,
            vec![
                (1000, 0, 22),
                (1010, 22, 18),
                (1015, 40, 14),
                (1020, 54, 11),
                (0x1234_5678, ext_start, 26),
                (0x2468_ACF0, ext_start + 26, 15),
                (0x2468_ACF9, ext_start + 41, 18),
            ]
        );
    }

    #[test]
    fn framing_chunk_size_and_restarts() {
        let p = payload(300);
        let m = message(3, 20, 0, &p, 128);
        // A full header after a message's first chunk restarts it: the
        // range starts there.
        let mut bytes = m[..140].to_vec();
        bytes.extend(&m);
        let restarted_end = bytes.len() as u64;
        // A Set Chunk Size inside a message's range breaks contiguity.
        bytes.extend(set_chunk_size(200));
        bytes.extend(&message(3, 20, 0, &p, 200)[..212]);
        bytes.extend(set_chunk_size(4096));
        bytes.push(0xc3);
        bytes.extend(&p[200..]);
        let f = all_framings(&bytes);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].start, f[0].end), (140, restarted_end));
        assert!(f[0].contiguous);
        assert_eq!(f[0].chunk_size, 128);
        assert!(!f[1].contiguous);
        assert_eq!(f[1].chunk_size, 4096);
    }

    #[test]
    fn zero_length_messages() {
        let mut bytes = message(6, 9, 0, b"", 128);
        bytes.extend([0xc6, 0xc6]);
        bytes.extend(message(3, 20, 0, b"", 128));
        assert_eq!(all_steps(&bytes), Ok(vec![(20, vec![])]));
    }
}
