//! Criterion: the RTMP front over a real ffmpeg publish (16 KiB captured
//! from ffmpeg 5.1, `src/rtmp/testdata/ffmpeg_publish.bin`), fed whole and
//! in the pieces a socket read would give; and the rechunker over what a
//! player gets (video at the server's chunk size), the one direction the
//! proxy rewrites. `cargo bench --bench front`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rtmp_proxy::rtmp::rechunk::{ChunkWriter, Header, Judgement, Rechunker};
use rtmp_proxy::rtmp::{Front, Progress, C0C1_LEN};

const PUBLISH: &[u8] = include_bytes!("../src/rtmp/testdata/ffmpeg_publish.bin");

fn feed_split(bytes: &[u8], piece: usize) -> bool {
    let mut obs = Front::new();
    let mut reply = Vec::new();
    for chunk in bytes.chunks(piece) {
        if !matches!(obs.feed(chunk, &mut reply), Progress::NeedMore) {
            break;
        }
    }
    matches!(obs.progress(), Progress::Found(_))
}

fn front(c: &mut Criterion) {
    // The front reads on after C0+C1 (the proxy vets those separately).
    let input = &PUBLISH[C0C1_LEN..];
    assert!(feed_split(input, input.len()), "the fixture must publish");
    let mut g = c.benchmark_group("front_publish");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("whole", |b| {
        b.iter(|| {
            let mut obs = Front::new();
            let mut reply = Vec::new();
            let found = matches!(obs.feed(black_box(input), &mut reply), Progress::Found(_));
            black_box(found)
        })
    });
    for piece in [1460usize, 128, 1] {
        g.bench_function(format!("split_{piece}"), |b| {
            b.iter(|| black_box(feed_split(black_box(input), piece)))
        });
    }
    g.finish();
}

/// 25 video frames of 40 KB each at chunk size 4096, as a media server
/// sends them to a player, after its Set Chunk Size.
fn player_stream() -> Vec<u8> {
    let mut w = ChunkWriter::default();
    let mut out = Vec::new();
    let control = |len| Header {
        csid: 2,
        timestamp: 0,
        len,
        msg_type: 1,
        msid: 0,
    };
    w.message(&control(4), &4096u32.to_be_bytes(), &mut out);
    let frame = vec![0x27u8; 40_000];
    for i in 0..25u32 {
        let h = Header {
            csid: 6,
            timestamp: i * 40,
            len: frame.len() as u32,
            msg_type: 9,
            msid: 1,
        };
        w.message(&h, &frame, &mut out);
    }
    out
}

fn rechunk(c: &mut Criterion) {
    let input = player_stream();
    let mut g = c.benchmark_group("rechunk_player");
    g.throughput(Throughput::Bytes(input.len() as u64));
    // Reads as a socket gives them to the copy loop.
    g.bench_function("reads_of_32k", |b| {
        let mut out = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            let mut r = Rechunker::new(ChunkWriter::default(), false);
            for read in black_box(&input).chunks(32 * 1024) {
                out.clear();
                let phase = r.feed(read, &mut out, &mut |_, _| Judgement::Forward);
                black_box(phase.is_ok());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, front, rechunk);
criterion_main!(benches);
