//! What one claim request ended with, from the client's point of view.
//!
//! The distinction that matters for the invariants is whether the claim may
//! have happened without the client seeing a 201 ([`Outcome::ambiguous`]): a
//! 503, another 5xx, a timeout or a broken connection. The API promises a 201
//! only for a recorded claim, not that every recorded claim got a 201.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Granted,
    AlreadyClaimed,
    LimitReached,
    SoldOut,
    Ended,
    NotStarted,
    RateLimited,
    Unavailable,
    /// Another 4xx (401, 404, ...): a harness or contract problem.
    ClientError,
    /// Another 5xx.
    ServerError,
    Timeout,
    Transport,
}

impl Outcome {
    pub const COUNT: usize = 12;
    pub const ALL: [Outcome; Self::COUNT] = [
        Self::Granted,
        Self::AlreadyClaimed,
        Self::LimitReached,
        Self::SoldOut,
        Self::Ended,
        Self::NotStarted,
        Self::RateLimited,
        Self::Unavailable,
        Self::ClientError,
        Self::ServerError,
        Self::Timeout,
        Self::Transport,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable name for the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::AlreadyClaimed => "already_claimed",
            Self::LimitReached => "limit_reached",
            Self::SoldOut => "sold_out",
            Self::Ended => "ended",
            Self::NotStarted => "not_started",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::ClientError => "other_4xx",
            Self::ServerError => "other_5xx",
            Self::Timeout => "timeout",
            Self::Transport => "transport_error",
        }
    }

    /// Row label of the summary table.
    pub fn label(self) -> &'static str {
        match self {
            Self::Granted => "201 granted",
            Self::AlreadyClaimed => "409 already_claimed",
            Self::LimitReached => "409 limit_reached",
            Self::SoldOut => "410 sold_out",
            Self::Ended => "410 ended",
            Self::NotStarted => "409 not_started",
            Self::RateLimited => "429 rate_limited",
            Self::Unavailable => "503 unavailable",
            Self::ClientError => "other 4xx",
            Self::ServerError => "other 5xx",
            Self::Timeout => "timeout",
            Self::Transport => "transport error",
        }
    }

    /// The claim may have been recorded although no 201 was seen.
    pub fn ambiguous(self) -> bool {
        matches!(self, Self::Unavailable | Self::ServerError | Self::Timeout | Self::Transport)
    }
}

/// The fields of a claim reply the harness looks at: a Coupon on 201, an
/// error body otherwise. Everything else is ignored.
#[derive(Debug, Default, Deserialize)]
pub struct Reply {
    pub id: Option<String>,
    pub user_id: Option<String>,
    pub error: Option<String>,
}

/// Classifies an HTTP answer. The body is parsed only where the status alone
/// does not tell (a 409 or 410 has several meanings) or where the invariants
/// need it (the coupon of a 201).
pub fn classify(status: u16, body: &[u8]) -> (Outcome, Reply) {
    let parse = || serde_json::from_slice::<Reply>(body).unwrap_or_default();
    match status {
        201 => (Outcome::Granted, parse()),
        409 | 410 => {
            let reply = parse();
            let outcome = match (status, reply.error.as_deref()) {
                (409, Some("already_claimed")) => Outcome::AlreadyClaimed,
                (409, Some("limit_reached")) => Outcome::LimitReached,
                (409, Some("not_started")) => Outcome::NotStarted,
                (410, Some("sold_out")) => Outcome::SoldOut,
                (410, Some("ended")) => Outcome::Ended,
                _ => Outcome::ClientError,
            };
            (outcome, reply)
        }
        429 => (Outcome::RateLimited, Reply::default()),
        503 => (Outcome::Unavailable, Reply::default()),
        s if s >= 500 => (Outcome::ServerError, Reply::default()),
        _ => (Outcome::ClientError, Reply::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_all() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }

    #[test]
    fn classifies_the_documented_answers() {
        let (o, r) = classify(201, br#"{"id":"C1","user_id":"u1","status":"claimed"}"#);
        assert_eq!(o, Outcome::Granted);
        assert_eq!(r.id.as_deref(), Some("C1"));
        assert_eq!(r.user_id.as_deref(), Some("u1"));
        let err = |e: &str| format!(r#"{{"error":"{e}","message":"x"}}"#).into_bytes();
        assert_eq!(classify(409, &err("already_claimed")).0, Outcome::AlreadyClaimed);
        assert_eq!(classify(410, &err("sold_out")).0, Outcome::SoldOut);
        assert_eq!(classify(410, &err("ended")).0, Outcome::Ended);
        assert_eq!(classify(409, b"garbage").0, Outcome::ClientError);
        assert_eq!(classify(503, b"").0, Outcome::Unavailable);
        assert_eq!(classify(500, b"").0, Outcome::ServerError);
        assert_eq!(classify(401, b"").0, Outcome::ClientError);
        assert!(Outcome::Timeout.ambiguous() && !Outcome::SoldOut.ambiguous());
    }
}
