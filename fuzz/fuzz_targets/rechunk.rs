//! A media server's side: arbitrary bytes into the rechunker, holding for
//! a judge whose verdicts the first byte picks, whole and split. Neither
//! the output nor a failure may depend on the split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtmp_proxy::rtmp::rechunk::{ChunkWriter, Judgement, Rechunker};

fn run(bytes: &[u8], seed: u8, piece: usize) -> (Vec<u8>, bool) {
    let mut r = Rechunker::new(ChunkWriter::default(), seed & 1 == 1);
    let mut out = Vec::new();
    let mut n = 0u32;
    let mut failed = false;
    for part in bytes.chunks(piece.max(1)) {
        let fed = r.feed(part, &mut out, &mut |_, _| {
            n += 1;
            match (u32::from(seed) >> 1).wrapping_add(n) % 4 {
                0 => Judgement::Drop,
                1 => Judgement::Accept,
                _ => Judgement::Forward,
            }
        });
        if fed.is_err() {
            failed = true;
            break;
        }
    }
    (out, failed)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else { return };
    let (whole, whole_failed) = run(rest, seed, rest.len());
    let (split, split_failed) = run(rest, seed, 1 + usize::from(seed) % 7);
    assert_eq!(whole_failed, split_failed);
    if !whole_failed {
        assert_eq!(whole, split);
    }
});
