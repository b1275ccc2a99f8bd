//! Hot paths of wrenn-core: id codec, JWTs, password and API-key checks, scheduling.
//!
//! Run with `cargo bench --bench core`. Figures are reported in the closing notes,
//! never asserted in tests.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use chrono::Utc;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use wrenn_core::auth::{
    ApiKey, JwtKeys, Role, UserClaims, hash_api_key, hash_password, verify_password,
};
use wrenn_core::id::{HostId, SandboxId, TeamId, UserId};
use wrenn_core::lifecycle::HostStatus;
use wrenn_core::model::{Host, HostKind, HostLoad, Resources};
use wrenn_core::scheduler::{Placement, Reserve, pick_least_loaded};

fn ids(c: &mut Criterion) {
    let id = SandboxId::new();
    let wire = id.to_string();
    c.bench_function("id/encode", |b| b.iter(|| black_box(id).to_string()));
    c.bench_function("id/parse", |b| {
        b.iter(|| black_box(wire.as_str()).parse::<SandboxId>())
    });
    c.bench_function("id/encode+parse", |b| {
        b.iter(|| black_box(id).to_string().parse::<SandboxId>())
    });
}

fn jwts(c: &mut Criterion) {
    let keys = JwtKeys::new("a-benchmark-secret-that-is-long-enough-to-use").expect("keys");
    let claims = UserClaims::new(
        UserId::new(),
        TeamId::new(),
        Role::Owner,
        "a@b.c",
        "A",
        false,
    );
    let token = keys.sign_user(&claims).expect("sign");
    c.bench_function("jwt/sign_user", |b| {
        b.iter(|| keys.sign_user(black_box(&claims)))
    });
    c.bench_function("jwt/verify_user", |b| {
        b.iter(|| keys.verify_user(black_box(&token)))
    });
    c.bench_function("jwt/sign+verify", |b| {
        b.iter(|| keys.verify_user(&keys.sign_user(black_box(&claims)).expect("sign")))
    });
}

fn passwords(c: &mut Criterion) {
    let phc = hash_password("correct horse battery staple").expect("hash");
    let mut g = c.benchmark_group("argon2id");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("verify", |b| {
        b.iter(|| verify_password(black_box("correct horse battery staple"), &phc))
    });
    g.finish();
}

fn api_keys(c: &mut Criterion) {
    // The auth cache's job: hash the presented key and find it among many.
    let keys: Vec<ApiKey> = (0..10_000).map(|_| ApiKey::generate()).collect();
    let table: HashMap<String, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.hash(), i))
        .collect();
    let probe = keys[4242].expose_secret().to_owned();
    c.bench_function("api_key/hash+lookup(10k)", |b| {
        b.iter(|| table.get(&hash_api_key(black_box(&probe))).copied())
    });
}

fn host(i: usize) -> HostLoad {
    let now = Utc::now();
    HostLoad {
        host: Host {
            id: HostId::new(),
            kind: if i % 10 == 0 {
                HostKind::Byoc
            } else {
                HostKind::Regular
            },
            team_id: None,
            provider: "bench".into(),
            availability_zone: format!("az-{}", i % 3),
            arch: "x86_64".into(),
            cpu_cores: 32,
            memory_mb: 131_072,
            disk_gb: 2_000,
            address: format!("10.0.{}.{}:50051", i / 250, i % 250),
            status: if i % 17 == 0 {
                HostStatus::Unreachable
            } else {
                HostStatus::Online
            },
            last_heartbeat_at: Some(now),
            metadata: serde_json::json!({}),
            created_by: None,
            created_at: now,
            updated_at: now,
            cert_fingerprint: String::new(),
            cert_expires_at: None,
        },
        running_memory_mb: ((i * 7919) % 100_000) as i64,
        running_vcpus: ((i * 31) % 40) as i64,
        running_disk_mb: ((i * 104_729) % 1_000_000) as i64,
        paused_memory_mb: ((i * 13) % 20_000) as i64,
        paused_vcpus: 0,
        paused_disk_mb: ((i * 17) % 200_000) as i64,
    }
}

fn scheduling(c: &mut Criterion) {
    let hosts: Vec<HostLoad> = (0..1000).map(host).collect();
    let placement = Placement {
        team_id: TeamId::new(),
        team_is_byoc: false,
        resources: Resources {
            vcpus: 2,
            memory_mb: 2048,
            disk_size_mb: 20_480,
        },
        avoid: Vec::new(),
    };
    let reserve = Reserve::default();
    c.bench_function("scheduler/least_loaded(1000 hosts)", |b| {
        b.iter(|| pick_least_loaded(black_box(&hosts), &placement, &reserve).map(|h| h.host.id))
    });
    c.bench_function("scheduler/least_loaded(1000 hosts, cloned input)", |b| {
        b.iter_batched(
            || hosts.clone(),
            |h| pick_least_loaded(&h, &placement, &reserve).map(|l| l.host.id),
            BatchSize::LargeInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = ids, jwts, passwords, api_keys, scheduling
}
criterion_main!(benches);
