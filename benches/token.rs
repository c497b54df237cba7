//! Criterion micro-benchmarks of the affinity token: sign and verify.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use stickyd::token::{Claims, KeyRing};

fn token(c: &mut Criterion) {
    let ring = KeyRing::new(
        &[b"a-benchmark-key-that-is-32-bytes-long!".as_slice()],
        "stickyd",
    );
    let claims = Claims {
        backend_tag: ring.backend_tag(0, "app-1"),
        nonce: 0x1234_5678_9abc_def0,
        issued_at: 1_800_000_000,
        last_seen: 1_800_000_000,
        backup_tag: [0; 8],
        backup2_tag: [0; 8],
    };
    let encoded = ring.sign(&claims);
    c.bench_function("token/sign", |b| b.iter(|| ring.sign(black_box(&claims))));
    c.bench_function("token/verify", |b| {
        b.iter(|| ring.verify(black_box(encoded.as_str().as_bytes())))
    });
}

criterion_group!(benches, token);
criterion_main!(benches);
