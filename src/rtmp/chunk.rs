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
        }
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
                });
                self.streams.len().saturating_sub(1)
            }
            None => return Err(ChunkError::UnknownChunkStream),
        };
        let Some(s) = self.streams.get_mut(slot) else {
            return Err(ChunkError::UnknownChunkStream);
        };
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
                self.done = payload;
                Ok(Step::Message(msg_type))
            }
            _ => Ok(Step::Continue),
        }
    }
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

    #[test]
    fn zero_length_messages() {
        let mut bytes = message(6, 9, 0, b"", 128);
        bytes.extend([0xc6, 0xc6]);
        bytes.extend(message(3, 20, 0, b"", 128));
        assert_eq!(all_steps(&bytes), Ok(vec![(20, vec![])]));
    }
}
