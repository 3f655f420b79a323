//! The RTMP handshake as the proxy speaks it: answering clients itself, and
//! opening connections to media servers. Pure functions, no I/O.
//!
//! Two handshakes share the same byte layout (C0/S0 = version, then three
//! 1536-byte blocks). The *simple* one of the spec: S1 is time, zero and
//! random bytes, S2 echoes C1. The *digest* one of Flash Player, which
//! ffmpeg, OBS and librtmp also send: C1 carries a non-zero version and an
//! HMAC-SHA256 digest at a position derived from its own bytes. A server
//! that sees it answers with a digest in S1 and an S2 signed with a key
//! derived from the client's digest, and clients that check (ffmpeg playing,
//! Flash Player) drop servers that don't, so we answer in kind, byte for
//! byte as nginx-rtmp (ngx_rtmp_handshake.c) and SRS do. Towards media
//! servers the simple handshake is enough: every server accepts it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::RTMP_VERSION;

/// Length of C1, S1, C2 and S2.
pub const HANDSHAKE_LEN: usize = 1536;

const DIGEST_LEN: usize = 32;
/// S2's signature takes its last 32 bytes.
const SIGNATURE_AT: usize = 1504;
const _: () = assert!(SIGNATURE_AT + DIGEST_LEN == HANDSHAKE_LEN);

/// The two places a digest may sit. Both derive the position from the 4
/// bytes at the base; Flash Player's two schemes differ only in the base.
/// nginx looks at 772 first, so do we: a C1 valid under both (about 2^-256
/// for a random block) then gets the same answer from us as from nginx.
const SCHEME_BASES: [usize; 2] = [772, 8];
/// Keeps the 32-byte digest inside the 764 bytes that follow its base.
const OFFSET_MODULUS: usize = 728;

/// The "open" parts sign C1 and S1 (anyone can compute them); the full
/// keys, with their 32-byte tail, derive the keys of the S2/C2 signatures.
const CLIENT_KEY_OPEN: &[u8] = b"Genuine Adobe Flash Player 001";
const SERVER_KEY_OPEN: &[u8] = b"Genuine Adobe Flash Media Server 001";
const SERVER_KEY: &[u8; 68] = b"Genuine Adobe Flash Media Server 001\
    \xF0\xEE\xC2\x4A\x80\x68\xBE\xE8\x2E\x00\xD0\xD1\x02\x9E\x7E\x57\
    \x6E\xEC\x5D\x2D\x29\x80\x6F\xAB\x93\xB8\xE6\x36\xCF\xEB\x31\xAE";

/// What nginx-rtmp puts in S1[4..8]. ffmpeg validates a server's digest
/// only when S1[4] >= 3, so it must not be zero.
const SERVER_VERSION: [u8; 4] = [0x0D, 0x0E, 0x0A, 0x0D];

type HmacSha256 = Hmac<Sha256>;

/// Where a client's digest was found in its C1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientDigest {
    base: usize,
    pos: usize,
    digest: [u8; DIGEST_LEN],
}

/// S0+S1+S2 answering a client's C0+C1 (`c0c1`, 1537 bytes, `c0c1[0] == 3`).
///
/// A C1 with a valid Flash-style digest gets S1 with a server digest (placed
/// with the scheme the client used) and S2 signed over the client's digest,
/// which clients validating the server (ffmpeg playing) require. Anything
/// else gets the simple handshake: S1 = time 0, zero, random; S2 = C1. Input
/// of the wrong length is answered simply too, with S2 = the bytes after C0
/// zero-padded or cut to 1536, so the result is always 3073 bytes.
pub fn answer(c0c1: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HANDSHAKE_LEN.saturating_mul(2).saturating_add(1));
    out.push(RTMP_VERSION);
    match client_digest(c0c1).and_then(|c| digest_reply(&c)) {
        Some((s1, s2)) => {
            out.extend_from_slice(&s1);
            out.extend_from_slice(&s2);
        }
        None => {
            out.extend_from_slice(&simple_block());
            out.extend_from_slice(&echo(c0c1.get(1..).unwrap_or_default()));
        }
    }
    out
}

/// Which handshake the client used, for a metric label: "digest" or
/// "simple". Agrees with the answer [`answer`] gives.
pub fn kind(c0c1: &[u8]) -> &'static str {
    if client_digest(c0c1).is_some() {
        "digest"
    } else {
        "simple"
    }
}

/// C0+C1 the proxy sends to a media server: version 3 and a simple C1
/// (time 0, zero version, random). A zero version tells the server not to
/// look for a digest, so it answers with the plain echo.
pub fn client_hello() -> Vec<u8> {
    let mut out = Vec::with_capacity(HANDSHAKE_LEN.saturating_add(1));
    out.push(RTMP_VERSION);
    out.extend_from_slice(&simple_block());
    out
}

/// C2 the proxy sends after reading a server's S0+S1+S2 (`s0s1s2`, 3073
/// bytes): the echo of S1 (zero-padded if `s0s1s2` is short). Servers that
/// sent a digest S1 accept the echo too, since we never sent a digest C1.
pub fn client_reply(s0s1s2: &[u8]) -> Vec<u8> {
    echo(s0s1s2.get(1..).unwrap_or_default()).to_vec()
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Option<[u8; DIGEST_LEN]> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac.finalize().into_bytes().into())
}

/// Position of the digest under the scheme with the given base.
fn digest_pos(block: &[u8], base: usize) -> Option<usize> {
    let seed = block.get(base..base.checked_add(4)?)?;
    let sum = seed
        .iter()
        .fold(0usize, |acc, &b| acc.wrapping_add(usize::from(b)));
    sum.checked_rem(OFFSET_MODULUS)?
        .checked_add(base)?
        .checked_add(4)
}

/// HMAC of the block without the 32 bytes at `pos`, where the digest goes.
fn block_digest(key: &[u8], block: &[u8], pos: usize) -> Option<[u8; DIGEST_LEN]> {
    let end = pos.checked_add(DIGEST_LEN)?;
    hmac_sha256(key, &[block.get(..pos)?, block.get(end..)?])
}

fn client_digest(c0c1: &[u8]) -> Option<ClientDigest> {
    if c0c1.len() != HANDSHAKE_LEN.checked_add(1)? {
        return None;
    }
    let c1 = c0c1.get(1..)?;
    // Flash Player's rule, which nginx follows: a zero version means a
    // client that expects the echo, whatever its bytes look like.
    if c1.get(4..8)? == [0; 4] {
        return None;
    }
    SCHEME_BASES.iter().find_map(|&base| {
        let pos = digest_pos(c1, base)?;
        let digest: [u8; DIGEST_LEN] =
            c1.get(pos..pos.checked_add(DIGEST_LEN)?)?.try_into().ok()?;
        (block_digest(CLIENT_KEY_OPEN, c1, pos)? == digest).then_some(ClientDigest {
            base,
            pos,
            digest,
        })
    })
}

/// S1 and S2 of the digest handshake.
fn digest_reply(client: &ClientDigest) -> Option<([u8; HANDSHAKE_LEN], [u8; HANDSHAKE_LEN])> {
    let mut s1 = simple_block();
    s1.get_mut(4..8)?.copy_from_slice(&SERVER_VERSION);
    // Same scheme as the client, as SRS does (nginx always uses base 8):
    // a client that only knows one scheme evidently knows this one.
    let pos = digest_pos(&s1, client.base)?;
    let digest = block_digest(SERVER_KEY_OPEN, &s1, pos)?;
    s1.get_mut(pos..pos.checked_add(DIGEST_LEN)?)?
        .copy_from_slice(&digest);

    let mut s2 = [0; HANDSHAKE_LEN];
    fastrand::fill(&mut s2);
    let key = hmac_sha256(SERVER_KEY, &[&client.digest])?;
    let (signed, signature) = s2.split_at_mut_checked(SIGNATURE_AT)?;
    signature.copy_from_slice(&hmac_sha256(&key, &[signed])?);
    Some((s1, s2))
}

/// Time 0 (the spec allows it; nobody uses the peer's epoch), zero
/// version, random rest. Not cryptographic randomness: nothing secret
/// rides on it, and nginx uses rand().
fn simple_block() -> [u8; HANDSHAKE_LEN] {
    let mut block = [0; HANDSHAKE_LEN];
    if let Some(random) = block.get_mut(8..) {
        fastrand::fill(random);
    }
    block
}

/// `block` zero-padded or cut to 1536 bytes.
fn echo(block: &[u8]) -> [u8; HANDSHAKE_LEN] {
    let mut out = [0; HANDSHAKE_LEN];
    for (o, b) in out.iter_mut().zip(block) {
        *o = *b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ffmpeg 5.1 publisher's first bytes; its C0+C1 is what ffmpeg
    /// sends whether publishing or playing (fixed seed 0xDEADC0DE).
    const FFMPEG: &[u8] = include_bytes!("testdata/ffmpeg_publish.bin");

    fn ffmpeg_c0c1() -> &'static [u8] {
        &FFMPEG[..1537]
    }

    // Keys typed afresh from rtmpproto.c, so the validator below does not
    // trust the module's copies.
    const FF_PLAYER_KEY_OPEN: &[u8] = b"Genuine Adobe Flash Player 001";
    const FF_SERVER_KEY_OPEN: &[u8] = b"Genuine Adobe Flash Media Server 001";
    const FF_KEY_TAIL: [u8; 32] = [
        0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E,
        0x57, 0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB,
        0x31, 0xAE,
    ];

    fn ff_server_key() -> Vec<u8> {
        [FF_SERVER_KEY_OPEN, &FF_KEY_TAIL].concat()
    }

    /// ff_rtmp_calc_digest: HMAC-SHA256 of `src`, skipping 32 bytes at `gap`
    /// if any.
    fn ff_calc_digest(src: &[u8], gap: Option<usize>, key: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        match gap {
            None => mac.update(src),
            Some(gap) => {
                mac.update(&src[..gap]);
                mac.update(&src[gap + 32..]);
            }
        }
        mac.finalize().into_bytes().into()
    }

    /// ff_rtmp_calc_digest_pos.
    fn ff_calc_digest_pos(buf: &[u8], off: usize, mod_val: usize, add_val: usize) -> usize {
        let sum: usize = buf[off..off + 4].iter().map(|&b| usize::from(b)).sum();
        sum % mod_val + add_val
    }

    /// rtmp_validate_digest: 0 if invalid, else the digest's position.
    fn ff_validate_digest(buf: &[u8], off: usize) -> usize {
        let pos = ff_calc_digest_pos(buf, off, 728, off + 4);
        let digest = ff_calc_digest(buf, Some(pos), FF_SERVER_KEY_OPEN);
        if digest[..] == buf[pos..pos + 32] {
            pos
        } else {
            0
        }
    }

    /// rtmp_handshake_imprint_with_digest, with the base as a parameter:
    /// makes `c1` a digest C1 and returns the digest's position.
    fn imprint(c1: &mut [u8], base: usize) -> usize {
        let pos = ff_calc_digest_pos(c1, base, 728, base + 4);
        let digest = ff_calc_digest(c1, Some(pos), FF_PLAYER_KEY_OPEN);
        c1[pos..pos + 32].copy_from_slice(&digest);
        pos
    }

    #[derive(Debug, PartialEq)]
    enum Player {
        /// S1's digest and S2's signature checked out.
        Validated,
        /// ffmpeg skips the checks when S1[4] < 3.
        Skipped,
    }

    /// What rtmp_handshake in ffmpeg's rtmpproto.c does with S0+S1+S2 when
    /// playing (`rt->is_input`), given the C0+C1 it sent and the position
    /// of its own digest there.
    fn ffmpeg_player(
        tosend: &[u8],
        client_pos: usize,
        reply: &[u8],
    ) -> Result<Player, &'static str> {
        assert_eq!(reply.len(), 1 + 2 * 1536);
        let serverdata = &reply[..1537];
        let clientdata = &reply[1537..];
        if serverdata[5] < 3 {
            return Ok(Player::Skipped);
        }
        let mut server_pos = ff_validate_digest(&serverdata[1..], 772);
        if server_pos == 0 {
            server_pos = ff_validate_digest(&serverdata[1..], 8);
            if server_pos == 0 {
                return Err("Server response validating failed");
            }
        }
        let client_digest = &tosend[1 + client_pos..1 + client_pos + 32];
        let digest = ff_calc_digest(client_digest, None, &ff_server_key());
        let signature = ff_calc_digest(&clientdata[..1536 - 32], None, &digest);
        if signature[..] != clientdata[1536 - 32..] {
            return Err("Signature mismatch");
        }
        Ok(Player::Validated)
    }

    /// ffmpeg imprints a non-RTMPE C1 with the base-8 scheme.
    fn ffmpeg_client_pos() -> usize {
        ff_calc_digest_pos(&ffmpeg_c0c1()[1..], 8, 728, 12)
    }

    /// Deterministic, dependency-free noise for the fuzz-like tests.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn keys_are_the_flash_keys() {
        assert_eq!(&SERVER_KEY[..], &ff_server_key()[..]);
        assert_eq!(SERVER_KEY_OPEN, &SERVER_KEY[..36]);
        assert_eq!(CLIENT_KEY_OPEN, FF_PLAYER_KEY_OPEN);
    }

    #[test]
    fn ffmpeg_c1_is_a_digest_c1_at_base_8() {
        let c0c1 = ffmpeg_c0c1();
        assert_eq!(c0c1[0], 3);
        // RTMP_CLIENT_VER1..4 of rtmpproto.c: 9.0.124.2.
        assert_eq!(c0c1[5..9], [9, 0, 124, 2]);
        assert_eq!(kind(c0c1), "digest");
        let found = client_digest(c0c1).expect("digest found");
        let pos = ffmpeg_client_pos();
        assert_eq!((found.base, found.pos), (8, pos));
        assert_eq!(found.digest[..], c0c1[1 + pos..1 + pos + 32]);
    }

    #[test]
    fn ffmpeg_player_accepts_our_answer_to_its_c1() {
        let c0c1 = ffmpeg_c0c1();
        // S1 is random, so its digest lands somewhere new each time.
        for _ in 0..64 {
            let reply = answer(c0c1);
            assert_eq!(reply.len(), 3073);
            assert_eq!(reply[0], 3);
            assert_eq!(reply[1..5], [0; 4]);
            assert_eq!(reply[5..9], SERVER_VERSION);
            assert_eq!(
                ffmpeg_player(c0c1, ffmpeg_client_pos(), &reply),
                Ok(Player::Validated)
            );
            // The client used base 8, so S1's digest is there too.
            assert_ne!(ff_validate_digest(&reply[1..1537], 8), 0);
        }
    }

    #[test]
    fn ffmpeg_player_rejects_a_broken_s2_signature() {
        let c0c1 = ffmpeg_c0c1();
        for at in [1537 + 1504, 3072] {
            let mut reply = answer(c0c1);
            reply[at] ^= 0x01;
            assert_eq!(
                ffmpeg_player(c0c1, ffmpeg_client_pos(), &reply),
                Err("Signature mismatch")
            );
        }
    }

    #[test]
    fn ffmpeg_player_rejects_a_broken_s1_digest() {
        let c0c1 = ffmpeg_c0c1();
        let mut reply = answer(c0c1);
        let pos = ff_calc_digest_pos(&reply[1..1537], 8, 728, 12);
        reply[1 + pos + 7] ^= 0x80;
        assert_eq!(
            ffmpeg_player(c0c1, ffmpeg_client_pos(), &reply),
            Err("Server response validating failed")
        );
    }

    #[test]
    fn ffmpeg_player_rejects_a_signature_for_another_client() {
        let c0c1 = ffmpeg_c0c1();
        let mut other = c0c1.to_vec();
        other[100] ^= 0xff;
        other[1 + 8] ^= 0x01; // moves the digest so C1 stays valid
        let pos = imprint(&mut other[1..], 8);
        assert_eq!(kind(&other), "digest");
        let reply = answer(&other);
        assert_eq!(ffmpeg_player(&other, pos, &reply), Ok(Player::Validated));
        assert_eq!(
            ffmpeg_player(c0c1, ffmpeg_client_pos(), &reply),
            Err("Signature mismatch")
        );
    }

    #[test]
    fn digest_c1s_at_either_base_are_answered_in_kind() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for round in 0..200 {
            let base = if round % 2 == 0 { 772 } else { 8 };
            let mut c0c1 = rng.bytes(1537);
            c0c1[0] = 3;
            c0c1[5] |= 0x01; // non-zero version
            let pos = imprint(&mut c0c1[1..], base);
            let found = client_digest(&c0c1).expect("digest found");
            assert_eq!((found.base, found.pos), (base, pos));
            let reply = answer(&c0c1);
            assert_eq!(ffmpeg_player(&c0c1, pos, &reply), Ok(Player::Validated));
            assert_ne!(ff_validate_digest(&reply[1..1537], base), 0);
        }
    }

    #[test]
    fn simple_c1_gets_its_echo() {
        let mut rng = XorShift(7);
        let mut c0c1 = rng.bytes(1537);
        c0c1[0] = 3;
        c0c1[5..9].copy_from_slice(&[0; 4]);
        assert_eq!(kind(&c0c1), "simple");
        let reply = answer(&c0c1);
        assert_eq!(reply.len(), 3073);
        assert_eq!(reply[0], 3);
        assert_eq!(reply[1..9], [0; 8]);
        assert_eq!(reply[1537..], c0c1[1..]);
        assert_eq!(ffmpeg_player(&c0c1, 12, &reply), Ok(Player::Skipped));
    }

    #[test]
    fn zero_version_wins_over_a_valid_digest() {
        let mut c0c1 = ffmpeg_c0c1().to_vec();
        c0c1[5..9].copy_from_slice(&[0; 4]);
        imprint(&mut c0c1[1..], 8);
        assert_eq!(kind(&c0c1), "simple");
        assert_eq!(answer(&c0c1)[1537..], c0c1[1..]);
    }

    #[test]
    fn tampered_digest_c1_falls_back_to_simple() {
        let mut c0c1 = ffmpeg_c0c1().to_vec();
        c0c1[1500] ^= 0x01;
        assert_eq!(kind(&c0c1), "simple");
        let reply = answer(&c0c1);
        assert_eq!(reply[1..9], [0; 8]);
        assert_eq!(reply[1537..], c0c1[1..]);
    }

    #[test]
    fn wrong_lengths_get_a_simple_answer() {
        let c0c1 = ffmpeg_c0c1();
        let long = [c0c1, &[0xAA; 100]].concat();
        let cases: [&[u8]; 6] = [&[], &[3], &c0c1[..1536], &c0c1[..2], &long, FFMPEG];
        for input in cases {
            assert_eq!(kind(input), "simple", "{} bytes", input.len());
            let reply = answer(input);
            assert_eq!(reply.len(), 3073, "{} bytes", input.len());
            assert_eq!(reply[0], 3);
            let got = input.get(1..).unwrap_or_default();
            let n = got.len().min(1536);
            assert_eq!(reply[1537..1537 + n], got[..n]);
            assert!(reply[1537 + n..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift(0xDEAD_C0DE);
        for round in 0..400 {
            let len = if round % 4 == 0 {
                (rng.next() % 4000) as usize
            } else {
                1537
            };
            let mut input = rng.bytes(len);
            if round % 8 == 1 {
                input[5..9].copy_from_slice(&[0; 4]);
            }
            let reply = answer(&input);
            assert_eq!(reply.len(), 3073);
            // A random block carries a valid digest with odds of 2^-255.
            assert_eq!(kind(&input), "simple");
            assert_eq!(reply[1537..], echo(input.get(1..).unwrap_or_default()));
            assert_eq!(client_reply(&input).len(), 1536);
        }
    }

    #[test]
    fn client_hello_is_simple_and_random() {
        let a = client_hello();
        let b = client_hello();
        assert_eq!(a.len(), 1537);
        assert_eq!(a[0], 3);
        assert_eq!(a[1..9], [0; 8]);
        assert_ne!(a[9..], b[9..]);
        assert_eq!(kind(&a), "simple");
    }

    #[test]
    fn client_reply_echoes_s1() {
        let s0s1s2 = answer(ffmpeg_c0c1());
        let c2 = client_reply(&s0s1s2);
        assert_eq!(c2.len(), 1536);
        assert_eq!(c2[..], s0s1s2[1..1537]);
        let short = client_reply(&s0s1s2[..100]);
        assert_eq!(short.len(), 1536);
        assert_eq!(short[..99], s0s1s2[1..100]);
        assert!(short[99..].iter().all(|&b| b == 0));
        assert_eq!(client_reply(&[]), vec![0; 1536]);
    }
}
