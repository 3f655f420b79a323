//! Structure-aware: the input is a program of ops that write chunk headers
//! (all formats, csid forms, extended timestamps, fuzzed lengths and types),
//! raw payload bytes, well-formed command messages (at the chunk size in
//! force), Set Chunk Size and Abort. This reaches states random bytes rarely
//! do: deep interleaving, half-finished messages, mid-stream size changes.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
    fn csid(&mut self) -> u32 {
        match self.byte() {
            0..=199 => 2 + u32::from(self.byte() % 10),
            200..=227 => 64 + u32::from(self.byte()),
            _ => 64 + u32::from(self.u16()),
        }
    }
    fn string(&mut self) -> String {
        let n = usize::from(self.byte() % 16);
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}

fn basic(out: &mut Vec<u8>, fmt: u8, csid: u32) {
    match csid {
        2..=63 => out.push(fmt << 6 | csid as u8),
        64..=319 => out.extend([fmt << 6, (csid - 64) as u8]),
        _ => out.extend([fmt << 6 | 1, (csid - 64) as u8, ((csid - 64) >> 8) as u8]),
    }
}

fn amf_str(out: &mut Vec<u8>, s: &str) {
    out.push(2);
    out.extend((s.len() as u16).to_be_bytes());
    out.extend(s.as_bytes());
}

fn command(ops: &mut Ops) -> Vec<u8> {
    let mut p = Vec::new();
    let name = [
        "connect",
        "publish",
        "play",
        "FCPublish",
        "releaseStream",
        "createStream",
    ][usize::from(ops.byte() % 6)];
    amf_str(&mut p, name);
    p.push(0);
    p.extend(1.0f64.to_be_bytes());
    if name == "connect" {
        p.push(3);
        for key in ["app", "tcUrl"] {
            p.extend((key.len() as u16).to_be_bytes());
            p.extend(key.as_bytes());
            let v = ops.string();
            amf_str(&mut p, &v);
        }
        p.extend([0, 0, 9]);
    } else {
        p.push(5);
        for _ in 0..ops.byte() % 3 {
            let v = ops.string();
            amf_str(&mut p, &v);
        }
    }
    p
}

/// Whole message as type 0 + type 3 chunks at `chunk_size`.
fn message(out: &mut Vec<u8>, csid: u32, msg_type: u8, ts: u32, payload: &[u8], chunk_size: usize) {
    let ext = ts >= 0xFF_FFFF;
    basic(out, 0, csid);
    out.extend(&ts.min(0xFF_FFFF).to_be_bytes()[1..]);
    out.extend(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(msg_type);
    out.extend(1u32.to_le_bytes());
    for (i, chunk) in payload.chunks(chunk_size.max(1)).enumerate() {
        if i > 0 {
            basic(out, 3, csid);
        }
        if ext {
            out.extend(ts.to_be_bytes());
        }
        out.extend(chunk);
    }
}

fn build(mut ops: Ops) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk_size = 128usize;
    while !ops.0.is_empty() && out.len() < 100_000 {
        match ops.byte() % 9 {
            fmt @ 0..=3 => {
                let csid = ops.csid();
                basic(&mut out, fmt, csid);
                let ts: u32 = if ops.byte() & 1 == 1 { 0xFF_FFFF } else { 0 };
                if fmt < 3 {
                    out.extend(&ts.to_be_bytes()[1..]);
                }
                if fmt < 2 {
                    let len = if ops.byte() & 7 == 0 {
                        u32::from(ops.u16()) << 8
                    } else {
                        u32::from(ops.u16())
                    };
                    out.extend(&len.to_be_bytes()[1..]);
                    out.push([1, 2, 8, 9, 17, 18, 20, 4, 5, 0][usize::from(ops.byte() % 10)]);
                }
                if fmt == 0 {
                    out.extend(1u32.to_le_bytes());
                }
                if ts == 0xFF_FFFF || fmt == 3 && ops.byte() & 1 == 1 {
                    out.extend(0x0100_0000u32.to_be_bytes());
                }
            }
            4 => {
                let n = usize::from(ops.u16() % 4096);
                let fill = ops.byte();
                out.extend(std::iter::repeat_n(fill, n));
            }
            5 => {
                let n = usize::from(ops.byte());
                let b = ops.bytes(n).to_vec();
                out.extend(b);
            }
            6 => {
                let csid = ops.csid();
                let ts = if ops.byte() & 1 == 1 { 0x0100_0000 } else { 5 };
                let p = command(&mut ops);
                let t = if ops.byte() & 1 == 1 { 20 } else { 17 };
                let p = if t == 17 {
                    [&[0u8][..], &p].concat()
                } else {
                    p
                };
                message(&mut out, csid, t, ts, &p, chunk_size);
            }
            7 => {
                let size = match ops.byte() % 4 {
                    0 => u32::from(ops.byte()),
                    1 => u32::from(ops.u16()),
                    2 => 4096,
                    _ => u32::from_be_bytes([ops.byte(), ops.byte(), ops.byte(), ops.byte()]),
                };
                message(&mut out, 2, 1, 0, &size.to_be_bytes(), chunk_size);
                if (1..=0x7FFF_FFFF).contains(&size) {
                    chunk_size = size as usize;
                }
            }
            _ => {
                let csid = ops.csid();
                message(&mut out, 2, 2, 0, &csid.to_be_bytes(), chunk_size);
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Some((&seed, rest)) = data.split_first() {
        let stream = build(Ops(rest));
        common::check(&[&common::C2, &stream], seed);
    }
});
