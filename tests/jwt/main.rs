//! Interop of our HS256 verifier (`flashgrab::auth`, hand-rolled on hmac +
//! sha2) with two JWT libraries: tokens made by jsonwebtoken (here) and by
//! PyJWT (`pyjwt.json`, made by `make_pyjwt_vectors.py`) verify to their
//! subject, ours verify with jsonwebtoken, and tampered ones are refused.
//! No server needed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flashgrab::auth::{JwtKeys, TokenError};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// 2027-01-15: after every `nbf` and before every `exp` of the vectors.
const NOW: i64 = 1_800_000_000;
/// 2100-01-01.
const FAR: i64 = 4_102_444_800;
const SECRET: &[u8] = b"jsonwebtoken-interop-secret-0123456789";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
}

fn by_jsonwebtoken(header: &Header, claims: &Claims, secret: &[u8]) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

fn claims(sub: &str) -> Claims {
    Claims { sub: sub.into(), exp: FAR, nbf: None }
}

#[derive(Deserialize)]
struct Vectors {
    made_by: String,
    previous_secret: String,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    secret: String,
    token: String,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Ok(String),
    Err(String),
}

fn pyjwt() -> Vectors {
    serde_json::from_str(include_str!("pyjwt.json")).unwrap()
}

#[test]
fn tokens_made_by_pyjwt_verify_and_its_refusals_are_ours() {
    let v = pyjwt();
    assert!(v.vectors.len() >= 8, "{}", v.made_by);
    for t in &v.vectors {
        let keys = JwtKeys::new(t.secret.as_bytes()).with_previous(Some(v.previous_secret.as_bytes()));
        let got = keys.verify(&t.token, NOW).map(|u| u.as_str().to_owned()).map_err(|e| format!("{e:?}"));
        let want = match &t.expect {
            Expect::Ok(sub) => Ok(sub.clone()),
            Expect::Err(e) => Err(e.clone()),
        };
        assert_eq!(got, want, "{} ({})", t.name, v.made_by);
    }
}

#[test]
fn tokens_made_by_jsonwebtoken_verify() {
    let keys = JwtKeys::new(SECRET);
    // Its default header is {"typ":"JWT","alg":"HS256"}.
    let plain = by_jsonwebtoken(&Header::new(Algorithm::HS256), &claims("jwt-user-1"), SECRET);
    assert_eq!(keys.verify(&plain, NOW).unwrap().as_str(), "jwt-user-1");
    let with_kid = Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) };
    let t = by_jsonwebtoken(&with_kid, &claims("jwt-user-2"), SECRET);
    assert_eq!(keys.verify(&t, NOW).unwrap().as_str(), "jwt-user-2");
    let t = by_jsonwebtoken(&Header::default(), &Claims { nbf: Some(NOW - 10), ..claims("jwt-user-3") }, SECRET);
    assert_eq!(keys.verify(&t, NOW).unwrap().as_str(), "jwt-user-3");

    let expired = by_jsonwebtoken(&Header::default(), &Claims { exp: NOW - 1, ..claims("u") }, SECRET);
    assert_eq!(keys.verify(&expired, NOW), Err(TokenError::Expired));
    let early = by_jsonwebtoken(&Header::default(), &Claims { nbf: Some(NOW + 60), ..claims("u") }, SECRET);
    assert_eq!(keys.verify(&early, NOW), Err(TokenError::NotYetValid));
    let hs512 = by_jsonwebtoken(&Header::new(Algorithm::HS512), &claims("u"), SECRET);
    assert_eq!(keys.verify(&hs512, NOW), Err(TokenError::Algorithm));
}

#[test]
fn our_tokens_verify_with_jsonwebtoken() {
    let token = JwtKeys::new(SECRET).sign("our-user", FAR);
    let got = jsonwebtoken::decode::<Claims>(
        &token,
        &DecodingKey::from_secret(SECRET).unwrap(),
        &Validation::new(Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(got.claims.sub, "our-user");
    assert_eq!(got.claims.exp, FAR);
}

/// The good tokens of both libraries, each with its secret.
fn good_tokens() -> Vec<(String, Vec<u8>)> {
    let mut tokens = vec![(by_jsonwebtoken(&Header::default(), &claims("jwt-user"), SECRET), SECRET.to_vec())];
    for t in pyjwt().vectors.into_iter().filter(|t| matches!(t.expect, Expect::Ok(_))) {
        tokens.push((t.token, t.secret.into_bytes()));
    }
    tokens
}

fn parts(token: &str) -> [String; 3] {
    let p: Vec<&str> = token.split('.').collect();
    [p[0].to_owned(), p[1].to_owned(), p[2].to_owned()]
}

#[test]
fn tampered_tokens_fail() {
    let mut tampered = 0;
    for (token, secret) in good_tokens() {
        let keys = JwtKeys::new(&secret);
        // Only the previous-secret vector needs rotation to pass; every
        // other good token must pass as is.
        if keys.verify(&token, NOW).is_err() {
            continue;
        }
        let [h, p, s] = parts(&token);

        // Payload altered (another subject, a later exp), signature kept.
        let payload: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p).unwrap()).unwrap();
        for (key, value) in [("sub", serde_json::json!("admin")), ("exp", serde_json::json!(FAR + 1))] {
            let mut altered = payload.clone();
            altered[key] = value;
            let p2 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&altered).unwrap());
            assert_eq!(keys.verify(&format!("{h}.{p2}.{s}"), NOW), Err(TokenError::Signature), "{key} in {token}");
        }

        // Signature altered: one bit of its first byte flipped.
        let mut sig = URL_SAFE_NO_PAD.decode(&s).unwrap();
        sig[0] ^= 1;
        let s2 = URL_SAFE_NO_PAD.encode(&sig);
        assert_eq!(keys.verify(&format!("{h}.{p}.{s2}"), NOW), Err(TokenError::Signature), "{token}");
        // Signature cut or dropped.
        assert!(keys.verify(&format!("{h}.{p}.{}", &s[..s.len() - 2]), NOW).is_err(), "{token}");
        assert!(keys.verify(&format!("{h}.{p}."), NOW).is_err(), "{token}");

        // alg none, with the signature dropped and with it kept.
        for none in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"none"}"#, r#"{"typ":"JWT","alg":"None"}"#] {
            let h2 = URL_SAFE_NO_PAD.encode(none);
            assert_eq!(keys.verify(&format!("{h2}.{p}."), NOW), Err(TokenError::Algorithm), "{none}");
            assert_eq!(keys.verify(&format!("{h2}.{p}.{s}"), NOW), Err(TokenError::Algorithm), "{none}");
        }
        // Another HMAC named in the header, the HS256 signature kept.
        let h2 = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS512","typ":"JWT"}"#);
        assert_eq!(keys.verify(&format!("{h2}.{p}.{s}"), NOW), Err(TokenError::Algorithm));

        // Wrong secret: one byte off, and a stranger's.
        let mut off = secret.clone();
        off[0] ^= 1;
        assert_eq!(JwtKeys::new(&off).verify(&token, NOW), Err(TokenError::Signature), "{token}");
        assert_eq!(JwtKeys::new(b"stranger").verify(&token, NOW), Err(TokenError::Signature), "{token}");
        tampered += 1;
    }
    assert!(tampered >= 5, "only {tampered} good tokens were tampered with");
}
