//! A/B of user-token verification: our hand-rolled HS256 verifier
//! (`flashgrab::auth::JwtKeys::verify`, hmac + sha2) against
//! `jsonwebtoken::decode` (12, rust_crypto: the same hmac + sha2) on the
//! same token, made by jsonwebtoken. Both check the signature, `exp` and
//! read `sub`. Two tokens: jsonwebtoken's default header, which our
//! verifier recognises as text, and one with a `kid`, which it decodes and
//! parses like jsonwebtoken always does. Run both in one run (the figures
//! go to BENCHMARKS.md, "JWT verification"):
//!
//!     cargo bench --bench jwt

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use flashgrab::auth::JwtKeys;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789";

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

fn jwt(c: &mut Criterion) {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims { sub: "user-1234567".into(), exp: now + 3600 };
    let ours = JwtKeys::new(SECRET);
    let key = DecodingKey::from_secret(SECRET).unwrap();
    let validation = Validation::new(Algorithm::HS256);
    let headers = [
        ("default_header", Header::new(Algorithm::HS256)),
        ("kid_header", Header { kid: Some("key-2026".into()), ..Header::new(Algorithm::HS256) }),
    ];
    for (name, header) in headers {
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET).unwrap()).unwrap();
        assert_eq!(ours.verify(&token, now).unwrap().as_str(), "user-1234567");
        assert_eq!(jsonwebtoken::decode::<Claims>(&token, &key, &validation).unwrap().claims.sub, "user-1234567");
        let mut g = c.benchmark_group(format!("jwt/{name}"));
        g.bench_function("flashgrab", |b| b.iter(|| ours.verify(black_box(&token), now).unwrap()));
        g.bench_function("jsonwebtoken", |b| {
            b.iter(|| jsonwebtoken::decode::<Claims>(black_box(&token), &key, &validation).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, jwt);
criterion_main!(benches);
