//! Ring build and lookup costs (`cargo bench --bench ring`).

use std::hint::black_box;

use cplb::ring::{Ring, hash_key};
use criterion::{Criterion, criterion_group, criterion_main};

fn servers(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("server{i}.k8s.local:6443"))
        .collect()
}

fn build(c: &mut Criterion) {
    let three = servers(3);
    c.bench_function("build 3 servers weight 5", |b| {
        b.iter(|| Ring::new(black_box(&three).iter().map(|s| (s.as_str(), 5))).unwrap())
    });
    let seven = servers(7);
    c.bench_function("build 7 servers weight 100", |b| {
        b.iter(|| Ring::new(black_box(&seven).iter().map(|s| (s.as_str(), 100))).unwrap())
    });
}

fn lookup(c: &mut Criterion) {
    let three = servers(3);
    let ring = Ring::new(three.iter().map(|s| (s.as_str(), 5))).unwrap();
    c.bench_function("lookup first (hash of client IP + walk)", |b| {
        b.iter(|| ring.first(hash_key(black_box(b"10.20.30.40"))))
    });
    c.bench_function("lookup full failover walk (3 servers)", |b| {
        b.iter(|| ring.walk(black_box(0x1234_5678)).count())
    });
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
