//! Criterion: taking and freeing a backend slot in a table of 100 backends,
//! under each balancing policy. `cargo bench --bench slots`.
//!
//! Every backend has `max_connections: 4` and 250 slots are held
//! throughout, so policies see uneven loads and some full backends, as in a
//! busy fleet.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rtmp_proxy::balancer::{policy, Limits, Member, SlotTable};
use rtmp_proxy::config::Balance;

const BACKENDS: usize = 100;
const HELD: usize = 250;

fn table(balance: Balance) -> std::sync::Arc<SlotTable> {
    let t = SlotTable::new(
        policy::from_config(balance),
        Limits {
            global_cap: None,
            max_queue: 1024,
        },
    );
    let members: Vec<Member> = (0..BACKENDS)
        .map(|i| Member {
            addr: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 1935)),
            weight: 1 + i % 10,
            max_connections: 4,
            source: "static".into(),
            task: None,
        })
        .collect();
    t.sync(&members, true);
    t
}

fn slots(c: &mut Criterion) {
    let mut g = c.benchmark_group("slot_acquire_release_100_backends");
    for balance in [
        Balance::Roundrobin,
        Balance::Leastconn,
        Balance::First,
        Balance::Random,
    ] {
        let t = table(balance);
        let held: Vec<_> = (0..HELD)
            .map(|_| t.try_acquire_excluding(&[]).expect("a free slot"))
            .collect();
        g.bench_function(balance.to_string(), |b| {
            b.iter(|| {
                let slot = t
                    .try_acquire_excluding(black_box(&[]))
                    .expect("a free slot");
                black_box(slot.addr());
                drop(slot);
            })
        });
        drop(held);
    }
    // The path a client takes: the async acquire (free slot, no queueing).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let t = table(Balance::Roundrobin);
    g.bench_function("roundrobin_async_acquire", |b| {
        b.iter(|| {
            let slot = rt
                .block_on(t.acquire(Duration::from_secs(1)))
                .expect("a free slot");
            black_box(slot.addr());
        })
    });
    g.finish();
}

criterion_group!(benches, slots);
criterion_main!(benches);
