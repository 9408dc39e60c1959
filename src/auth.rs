//! Credentials, as pure logic.
//!
//! - Admin: a bearer token from configuration, compared in constant time.
//! - Users: HS256 JWTs signed with the configured secret; `sub` is the user
//!   id, `exp` is required and honoured, `nbf` honoured when present, both
//!   with a small clock leeway (`FLASHGRAB_JWT_LEEWAY_SECS`: the issuer's
//!   clock and ours are never exactly equal). Only HS256 is accepted (no
//!   `alg: none`, no algorithm confusion).
//! - Rotation: a second, previous secret is also accepted while the tokens
//!   signed with it live (`FLASHGRAB_USER_JWT_SECRET_PREVIOUS`); new tokens
//!   are signed with the current one only. The previous key is tried only
//!   when the current one did not match, so the usual token costs nothing
//!   more.
//!
//! Hand-rolled on `hmac` + `sha2` rather than a JWT crate: it is 100 lines,
//! has exactly one algorithm to get right, and verifies a token 2-2.8x
//! faster than `jsonwebtoken::decode` on the same token (`benches/jwt.rs`,
//! BENCHMARKS.md). Interop is checked against tokens made by jsonwebtoken
//! and PyJWT, and tampered ones (`tests/jwt`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::UserId;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused. The HTTP layer maps all of them to 401; the
/// variant is only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported algorithm")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("bad subject")]
    Subject,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// `{"alg":"HS256","typ":"JWT"}` and `{"typ":"JWT","alg":"HS256"}`,
/// base64url without padding: the headers of nearly every HS256 token.
const HS256_HEADERS: [&str; 2] = ["eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9"];

/// The claims as read on the hot path: `sub` borrowed from the payload
/// unless it has escapes.
#[derive(Deserialize)]
struct BorrowedClaims<'a> {
    #[serde(borrow)]
    sub: std::borrow::Cow<'a, str>,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
}

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
}

/// Signs user tokens with the current secret and verifies them with it or
/// the previous one.
#[derive(Clone)]
pub struct JwtKeys {
    /// Keyed HMAC state, cloned per use (cheaper than re-keying).
    mac: HmacSha256,
    /// The secret being rotated out, accepted for verification only.
    previous: Option<HmacSha256>,
    /// Seconds a token is still accepted after `exp` and before `nbf`.
    leeway: i64,
}

impl JwtKeys {
    /// Keys of one secret, no leeway.
    pub fn new(secret: &[u8]) -> Self {
        Self { mac: hmac_key(secret), previous: None, leeway: 0 }
    }

    /// Also accept tokens signed with `previous` (rotation).
    pub fn with_previous(mut self, previous: Option<&[u8]>) -> Self {
        self.previous = previous.map(hmac_key);
        self
    }

    /// Accept `exp`/`nbf` off by up to `leeway`.
    pub fn with_leeway(mut self, leeway: std::time::Duration) -> Self {
        self.leeway = leeway.as_secs().min(i64::MAX as u64) as i64;
        self
    }

    /// Verifies `token` at unix time `now` and returns the user id.
    ///
    /// On the hot path of every claim (the sold-out flood included), so it
    /// avoids work a correct token does not need: the two usual encodings of
    /// the `{"alg":"HS256","typ":"JWT"}` header are recognised as text
    /// (any other header is decoded and its `alg` checked), the signature
    /// and payload are decoded into stack buffers, and `sub` is borrowed.
    pub fn verify(&self, token: &str, now: i64) -> Result<UserId, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        if !HS256_HEADERS.contains(&h) {
            let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| TokenError::Malformed)?;
            let header: Header = serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
            if header.alg != "HS256" {
                return Err(TokenError::Algorithm);
            }
        }
        // 32 bytes of HMAC-SHA256; the decoder wants room for its estimate.
        let mut sig = [0u8; 48];
        let n = URL_SAFE_NO_PAD.decode_slice(s, &mut sig).map_err(|_| TokenError::Malformed)?;
        let signed_by = |key: &HmacSha256| {
            let mut mac = key.clone();
            mac.update(h.as_bytes());
            mac.update(b".");
            mac.update(p.as_bytes());
            mac.verify_slice(&sig[..n]).is_ok()
        };
        if !signed_by(&self.mac) && !self.previous.as_ref().is_some_and(signed_by) {
            return Err(TokenError::Signature);
        }
        let mut stack = [0u8; 512];
        let heap;
        let payload: &[u8] = if p.len() <= 680 {
            let n = URL_SAFE_NO_PAD.decode_slice(p, &mut stack).map_err(|_| TokenError::Malformed)?;
            &stack[..n]
        } else {
            heap = URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::Malformed)?;
            &heap
        };
        let claims: BorrowedClaims = serde_json::from_slice(payload).map_err(|_| TokenError::Malformed)?;
        if now.saturating_sub(self.leeway) >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now.saturating_add(self.leeway) < nbf) {
            return Err(TokenError::NotYetValid);
        }
        UserId::parse(&claims.sub).ok_or(TokenError::Subject)
    }

    /// Mints a token for `sub` expiring at unix time `exp` (dev mode, tests,
    /// the load-test harness).
    pub fn sign(&self, sub: &str, exp: i64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = Claims { sub: sub.to_owned(), exp, nbf: None };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let mut mac = self.mac.clone();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{payload}.{sig}")
    }
}

fn hmac_key(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length")
}

/// Equality for the admin token in constant time (`subtle`: no early exit
/// on the first differing byte, and kept out of the optimiser's reach). A
/// length mismatch answers at once: the length is not the secret.
pub fn token_eq(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn the_known_headers_are_what_they_say() {
        for h in HS256_HEADERS {
            let json: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
            assert_eq!(json, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
        }
    }

    #[test]
    fn other_headers_are_parsed_and_only_hs256_is_accepted() {
        let k = JwtKeys::new(b"secret-secret-secret-secret-1234");
        let forge = |header: &str, sub: &str| {
            let h = URL_SAFE_NO_PAD.encode(header);
            let p = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"{sub}","exp":{}}}"#, NOW + 60));
            let mut mac = k.mac.clone();
            mac.update(format!("{h}.{p}").as_bytes());
            format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
        };
        assert_eq!(k.verify(&forge(r#"{"alg":"HS256"}"#, "a"), NOW).unwrap().as_str(), "a");
        assert_eq!(k.verify(&forge(r#"{"alg":"none"}"#, "a"), NOW), Err(TokenError::Algorithm));
        assert_eq!(k.verify(&forge(r#"{"alg":"RS256","typ":"JWT"}"#, "a"), NOW), Err(TokenError::Algorithm));
        assert_eq!(k.verify(&forge("not json", "a"), NOW), Err(TokenError::Malformed));
        // Escapes in `sub` are decoded (not borrowed) and still checked.
        assert_eq!(k.verify(&forge(r#"{"alg":"HS256"}"#, r"caf\u00e9"), NOW).unwrap().as_str(), "café");
        assert_eq!(k.verify(&forge(r#"{"alg":"HS256"}"#, r"a\nb"), NOW), Err(TokenError::Subject));
        let long = "x".repeat(64);
        let t = forge(r#"{"alg":"HS256"}"#, &long);
        assert_eq!(k.verify(&t, NOW).unwrap().as_str(), long);
        // A payload over the stack buffer is decoded on the heap and checked.
        assert_eq!(k.verify(&forge(r#"{"alg":"HS256"}"#, &"y".repeat(600)), NOW), Err(TokenError::Subject));
        // Truncated or padded signatures are refused.
        assert!(k.verify(&t[..t.len() - 1], NOW).is_err());
        assert!(k.verify(&format!("{t}A"), NOW).is_err());
    }

    #[test]
    fn round_trip() {
        let k = JwtKeys::new(b"secret-secret-secret-secret-1234");
        let t = k.sign("user-1", NOW + 60);
        assert_eq!(k.verify(&t, NOW).unwrap().as_str(), "user-1");
    }

    #[test]
    fn refuses_expired_wrong_key_and_junk() {
        let k = JwtKeys::new(b"one");
        let other = JwtKeys::new(b"two");
        assert_eq!(k.verify(&k.sign("u", NOW), NOW), Err(TokenError::Expired));
        assert_eq!(k.verify(&other.sign("u", NOW + 5), NOW), Err(TokenError::Signature));
        for junk in ["", "a.b", "a.b.c.d", "!!!.???.###", "e30.e30.e30"] {
            assert!(k.verify(junk, NOW).is_err(), "{junk}");
        }
        assert_eq!(k.verify(&k.sign("", NOW + 5), NOW), Err(TokenError::Subject));
        assert_eq!(k.verify(&k.sign(&"x".repeat(65), NOW + 5), NOW), Err(TokenError::Subject));
    }

    #[test]
    fn refuses_alg_none() {
        let k = JwtKeys::new(b"k");
        let good = k.sign("u", NOW + 5);
        let mut parts: Vec<&str> = good.split('.').collect();
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        parts[0] = &none;
        assert_eq!(k.verify(&parts.join("."), NOW), Err(TokenError::Algorithm));
    }

    #[test]
    fn rotation_accepts_the_current_and_the_previous_secret_only() {
        let (current, previous, stranger) = (JwtKeys::new(b"current"), JwtKeys::new(b"previous"), JwtKeys::new(b"x"));
        let k = JwtKeys::new(b"current").with_previous(Some(b"previous"));
        assert_eq!(k.verify(&current.sign("by-current", NOW + 60), NOW).unwrap().as_str(), "by-current");
        assert_eq!(k.verify(&previous.sign("by-previous", NOW + 60), NOW).unwrap().as_str(), "by-previous");
        assert_eq!(k.verify(&stranger.sign("u", NOW + 60), NOW), Err(TokenError::Signature));
        // Signing uses the current secret, and without a previous one the old tokens stop.
        assert!(current.verify(&k.sign("u", NOW + 60), NOW).is_ok());
        assert_eq!(current.verify(&previous.sign("u", NOW + 60), NOW), Err(TokenError::Signature));
        // Expiry is checked whichever secret signed.
        assert_eq!(k.verify(&previous.sign("u", NOW - 1), NOW), Err(TokenError::Expired));
    }

    #[test]
    fn leeway_on_exp_and_nbf() {
        let k = JwtKeys::new(b"k").with_leeway(std::time::Duration::from_secs(30));
        assert!(k.verify(&k.sign("u", NOW - 29), NOW).is_ok(), "expired 29 s ago, within 30 s");
        assert_eq!(k.verify(&k.sign("u", NOW - 30), NOW), Err(TokenError::Expired));
        let with_nbf = |nbf: i64| {
            let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
            let p = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"u","exp":{},"nbf":{nbf}}}"#, NOW + 600));
            let mut mac = k.mac.clone();
            mac.update(format!("{h}.{p}").as_bytes());
            format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
        };
        assert!(k.verify(&with_nbf(NOW + 30), NOW).is_ok(), "valid 30 s from now, within leeway");
        assert_eq!(k.verify(&with_nbf(NOW + 31), NOW), Err(TokenError::NotYetValid));
        // No leeway: strict.
        let strict = JwtKeys::new(b"k");
        assert_eq!(strict.verify(&k.sign("u", NOW - 1), NOW), Err(TokenError::Expired));
    }

    #[test]
    fn admin_token_compare() {
        assert!(token_eq(b"abc", b"abc"));
        assert!(!token_eq(b"abc", b"abd"));
        assert!(!token_eq(b"abc", b"abcd"));
        assert!(!token_eq(b"", b"abc"));
    }
}
