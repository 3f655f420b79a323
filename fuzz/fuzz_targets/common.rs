//! Shared by the fuzz targets: feed one input whole and in pseudo-random
//! pieces; results and answers must agree (the front promises split
//! invariance).

use rtmp_proxy::rtmp::{Front, Progress};

#[allow(dead_code)] // unused by the `front` target
pub const C2: [u8; 1536] = [0x5a; 1536];

/// Feeds `parts` concatenated, once whole and once split at points drawn
/// from `seed`, and checks both runs agree and results are sane.
pub fn check(parts: &[&[u8]], seed: u8) {
    let bytes = parts.concat();
    let mut whole = Front::new();
    let mut said = Vec::new();
    let want = whole.feed(&bytes, &mut said).clone();

    let mut split = Front::new();
    let mut said_split = Vec::new();
    // Small seeds favour tiny pieces (1-byte feeds), large ones big pieces.
    let max = 1 + usize::from(seed) * usize::from(seed);
    let mut state = u64::from(seed) | 1 << 32;
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state as usize % max + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        split.feed(piece, &mut said_split);
        rest = tail;
    }
    let got = split.feed(&[], &mut said_split).clone();
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{} bytes -> {want:?}", bytes.len());
    }
    assert_eq!(got, want);
    assert_eq!(said_split, said);
    if let Progress::Found(info) = &want {
        assert!(!info.stream_key.is_empty());
        // A rename (the auth hook's) reads back as the same stream under
        // the new name, or is refused.
        let stream = bytes.get(1536..).unwrap_or_default();
        let name = if seed % 2 == 0 { "n" } else { "a-longer-name?with=query" };
        if let Some(renamed) = whole.rename(stream, name) {
            let mut again = Front::new();
            let replay = [&bytes[..1536.min(bytes.len())], &renamed[..]].concat();
            match again.feed(&replay, &mut Vec::new()) {
                Progress::Found(seen) => {
                    assert_eq!(seen.stream_key, name);
                    assert_eq!((&seen.app, &seen.role), (&info.app, &info.role));
                }
                other => panic!("a renamed stream reads back as {other:?}"),
            }
        }
    }
    // Final results stay put.
    if want != Progress::NeedMore {
        let mut more = Vec::new();
        assert_eq!(whole.feed(&bytes, &mut more), &want);
        assert!(more.is_empty());
    }
}
