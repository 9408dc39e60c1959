//! What the front end adds to every claim, in CPU time: verifying the user
//! JWT, the three rate-limit checks (per address, per user with a new user
//! each time as in a drop, per instance) and the metrics (route counters,
//! claim outcome and latency histogram). Measured one by one and together
//! (`front/all`); `scripts/bench-front` turns the total into a share of the
//! instance's CPU per claim (BENCHMARKS.md, "Front end").
//!
//! Run: `cargo bench --bench front`.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use flashgrab::auth::JwtKeys;
use flashgrab::config::{ProtectSettings, Rate};
use flashgrab::domain::UserId;
use flashgrab::metrics::{ClaimLabel, HttpMetrics};
use flashgrab::protect::Protection;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789";
const CLAIM_ROUTE: &str = "/v1/campaigns/{id}/claim";

fn front(c: &mut Criterion) {
    let jwt = JwtKeys::new(SECRET);
    let exp = chrono::Utc::now().timestamp() + 3600;
    let tokens: Vec<String> = (0..4096).map(|i| jwt.sign(&format!("u{i}"), exp)).collect();
    let users: Vec<UserId> = (0..4096).map(|i| UserId::parse(&format!("u{i}")).unwrap()).collect();
    let now = chrono::Utc::now().timestamp();
    // Limits on (defaults), the per-address one raised so the one address
    // of the bench is checked but never refused, as in scripts/bench-front.
    let huge = Some(Rate { per_sec: 1_000_000_000, burst: 1_000_000_000 });
    let settings = ProtectSettings { ip_rate: huge, claim_rate: huge, ..Default::default() };
    let protection = Protection::new(&settings);
    let metrics = HttpMetrics::default();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let next_user = AtomicU64::new(0);
    // A new user per check, as during a drop (each inserts a key).
    let fresh_user = || UserId::parse(&format!("user-{}", next_user.fetch_add(1, Ordering::Relaxed))).unwrap();

    let mut g = c.benchmark_group("front");
    g.measurement_time(Duration::from_secs(3));
    let mut i = 0usize;
    g.bench_function("jwt_verify", |b| {
        b.iter(|| {
            i = (i + 1) % tokens.len();
            black_box(jwt.verify(black_box(&tokens[i]), now).unwrap());
        })
    });
    g.bench_function("limit_ip", |b| b.iter(|| protection.limits.check_ip(black_box(&ip)).unwrap()));
    g.bench_function("limit_user_known", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            let _ = black_box(protection.limits.check_user(black_box(&users[i])));
        })
    });
    g.bench_function("limit_user_new", |b| {
        b.iter_batched(fresh_user, |u| protection.limits.check_user(&u).unwrap(), criterion::BatchSize::SmallInput)
    });
    g.bench_function("limit_claims", |b| b.iter(|| protection.limits.check_claim().unwrap()));
    g.bench_function("metrics", |b| {
        b.iter(|| {
            metrics.response(black_box(CLAIM_ROUTE), 201);
            metrics.claim(ClaimLabel::Granted, black_box(Duration::from_micros(900)));
        })
    });
    g.bench_function("all", |b| {
        b.iter_batched(
            fresh_user,
            |u| {
                i = (i + 1) % tokens.len();
                protection.limits.check_ip(&ip).unwrap();
                black_box(jwt.verify(&tokens[i], now).unwrap());
                protection.limits.check_user(&u).unwrap();
                protection.limits.check_claim().unwrap();
                metrics.response(CLAIM_ROUTE, 201);
                metrics.claim(ClaimLabel::Granted, Duration::from_micros(900));
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, front);
criterion_main!(benches);
