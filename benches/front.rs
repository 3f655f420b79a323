//! Criterion: the RTMP front over a real ffmpeg publish (16 KiB captured
//! from ffmpeg 5.1, `src/rtmp/testdata/ffmpeg_publish.bin`), fed whole and
//! in the pieces a socket read would give. `cargo bench --bench front`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

criterion_group!(benches, front);
criterion_main!(benches);
