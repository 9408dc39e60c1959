//! What one request ended with, from the client's point of view.
//!
//! Two operations are sent: a claim (`POST /v1/campaigns/{id}/claim`) and a
//! redemption (`POST /v1/coupons/{id}/redeem`). Each answer is classified by
//! its status and, where the status alone does not tell, its `error` code.
//!
//! The distinction that matters for the invariants is whether the request may
//! have taken effect without the client seeing success ([`Outcome::ambiguous`]):
//! a 503, another 5xx, a timeout or a broken connection. The API promises a
//! 201 only for a recorded claim, not that every recorded claim got a 201.

use serde::Deserialize;

/// The two requests the harness sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Claim,
    Redeem,
}

impl Op {
    pub const COUNT: usize = 2;
    pub const ALL: [Op; Self::COUNT] = [Self::Claim, Self::Redeem];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Redeem => "redeem",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Granted,
    AlreadyClaimed,
    LimitReached,
    SoldOut,
    Ended,
    NotStarted,
    Redeemed,
    AlreadyRedeemed,
    NotYetValid,
    Expired,
    NotApplicable,
    CouponNotFound,
    RateLimited,
    Unavailable,
    /// Another 4xx (401, 404 on a claim, ...): a harness or contract problem.
    ClientError,
    /// Another 5xx.
    ServerError,
    Timeout,
    Transport,
}

impl Outcome {
    pub const COUNT: usize = 18;
    pub const ALL: [Outcome; Self::COUNT] = [
        Self::Granted,
        Self::AlreadyClaimed,
        Self::LimitReached,
        Self::SoldOut,
        Self::Ended,
        Self::NotStarted,
        Self::Redeemed,
        Self::AlreadyRedeemed,
        Self::NotYetValid,
        Self::Expired,
        Self::NotApplicable,
        Self::CouponNotFound,
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
            Self::Redeemed => "redeemed",
            Self::AlreadyRedeemed => "already_redeemed",
            Self::NotYetValid => "not_yet_valid",
            Self::Expired => "expired",
            Self::NotApplicable => "not_applicable",
            Self::CouponNotFound => "coupon_not_found",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::ClientError => "other_4xx",
            Self::ServerError => "other_5xx",
            Self::Timeout => "timeout",
            Self::Transport => "transport_error",
        }
    }

    /// Row label of the summary table and of the JSON report (`bench` finds
    /// the 201s' latency by it).
    pub fn label(self) -> &'static str {
        match self {
            Self::Granted => "201 granted",
            Self::AlreadyClaimed => "409 already_claimed",
            Self::LimitReached => "409 limit_reached",
            Self::SoldOut => "410 sold_out",
            Self::Ended => "410 ended",
            Self::NotStarted => "409 not_started",
            Self::Redeemed => "200 redeemed",
            Self::AlreadyRedeemed => "409 already_redeemed",
            Self::NotYetValid => "409 not_yet_valid",
            Self::Expired => "410 expired",
            Self::NotApplicable => "422 not_applicable",
            Self::CouponNotFound => "404 coupon_not_found",
            Self::RateLimited => "429 rate_limited",
            Self::Unavailable => "503 unavailable",
            Self::ClientError => "other 4xx",
            Self::ServerError => "other 5xx",
            Self::Timeout => "timeout",
            Self::Transport => "transport error",
        }
    }

    /// The request may have taken effect although no success was seen.
    pub fn ambiguous(self) -> bool {
        matches!(self, Self::Unavailable | Self::ServerError | Self::Timeout | Self::Transport)
    }

    /// Worth another try by a retrying user: the answer said "not now".
    pub fn retryable(self) -> bool {
        self.ambiguous() || matches!(self, Self::RateLimited | Self::NotStarted)
    }

    /// Counted as an error in the live rates and the time series.
    pub fn error(self) -> bool {
        self.ambiguous() || self == Self::ClientError
    }
}

/// The fields of an answer the harness looks at: a Coupon on 201, a
/// Redemption on a redeem 200, an error body otherwise.
#[derive(Debug, Default, Deserialize)]
pub struct Reply {
    pub id: Option<String>,
    pub user_id: Option<String>,
    pub coupon_id: Option<String>,
    pub order_id: Option<String>,
    pub discount_cents: Option<i64>,
    pub error: Option<String>,
}

/// Classifies an HTTP answer. The body is parsed only where the status alone
/// does not tell (a 409 or 410 has several meanings) or where the invariants
/// need it (the coupon of a 201, the discount of a redemption).
pub fn classify(op: Op, status: u16, body: &[u8]) -> (Outcome, Reply) {
    let parse = || serde_json::from_slice::<Reply>(body).unwrap_or_default();
    match (op, status) {
        (Op::Claim, 201) => (Outcome::Granted, parse()),
        (Op::Redeem, 200) => (Outcome::Redeemed, parse()),
        (_, 404 | 409 | 410 | 422) => {
            let reply = parse();
            let outcome = match (op, status, reply.error.as_deref()) {
                (Op::Claim, 409, Some("already_claimed")) => Outcome::AlreadyClaimed,
                (Op::Claim, 409, Some("limit_reached")) => Outcome::LimitReached,
                (Op::Claim, 409, Some("not_started")) => Outcome::NotStarted,
                (Op::Claim, 410, Some("sold_out")) => Outcome::SoldOut,
                (Op::Claim, 410, Some("ended")) => Outcome::Ended,
                (Op::Redeem, 404, Some("coupon_not_found")) => Outcome::CouponNotFound,
                (Op::Redeem, 409, Some("already_redeemed")) => Outcome::AlreadyRedeemed,
                (Op::Redeem, 409, Some("not_yet_valid")) => Outcome::NotYetValid,
                (Op::Redeem, 410, Some("expired")) => Outcome::Expired,
                (Op::Redeem, 422, Some("not_applicable")) => Outcome::NotApplicable,
                _ => Outcome::ClientError,
            };
            (outcome, reply)
        }
        (_, 429) => (Outcome::RateLimited, Reply::default()),
        (_, 503) => (Outcome::Unavailable, Reply::default()),
        (_, s) if s >= 500 => (Outcome::ServerError, Reply::default()),
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
        for (i, o) in Op::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }

    #[test]
    fn classifies_the_documented_claim_answers() {
        let (o, r) = classify(Op::Claim, 201, br#"{"id":"C1","user_id":"u1","status":"claimed"}"#);
        assert_eq!(o, Outcome::Granted);
        assert_eq!(r.id.as_deref(), Some("C1"));
        assert_eq!(r.user_id.as_deref(), Some("u1"));
        let err = |e: &str| format!(r#"{{"error":"{e}","message":"x"}}"#).into_bytes();
        assert_eq!(classify(Op::Claim, 409, &err("already_claimed")).0, Outcome::AlreadyClaimed);
        assert_eq!(classify(Op::Claim, 410, &err("sold_out")).0, Outcome::SoldOut);
        assert_eq!(classify(Op::Claim, 410, &err("ended")).0, Outcome::Ended);
        assert_eq!(classify(Op::Claim, 409, b"garbage").0, Outcome::ClientError);
        assert_eq!(classify(Op::Claim, 404, &err("campaign_not_found")).0, Outcome::ClientError);
        assert_eq!(classify(Op::Claim, 200, b"{}").0, Outcome::ClientError);
        assert_eq!(classify(Op::Claim, 503, b"").0, Outcome::Unavailable);
        assert_eq!(classify(Op::Claim, 500, b"").0, Outcome::ServerError);
        assert_eq!(classify(Op::Claim, 401, b"").0, Outcome::ClientError);
        assert!(Outcome::Timeout.ambiguous() && !Outcome::SoldOut.ambiguous());
        assert!(Outcome::RateLimited.retryable() && !Outcome::RateLimited.ambiguous());
    }

    #[test]
    fn classifies_the_documented_redeem_answers() {
        let body = br#"{"coupon_id":"C1","order_id":"o1","discount_cents":500,"status":"redeemed"}"#;
        let (o, r) = classify(Op::Redeem, 200, body);
        assert_eq!(o, Outcome::Redeemed);
        assert_eq!((r.coupon_id.as_deref(), r.discount_cents), (Some("C1"), Some(500)));
        let err = |e: &str| format!(r#"{{"error":"{e}","message":"x"}}"#).into_bytes();
        assert_eq!(classify(Op::Redeem, 404, &err("coupon_not_found")).0, Outcome::CouponNotFound);
        assert_eq!(classify(Op::Redeem, 409, &err("already_redeemed")).0, Outcome::AlreadyRedeemed);
        assert_eq!(classify(Op::Redeem, 409, &err("not_yet_valid")).0, Outcome::NotYetValid);
        assert_eq!(classify(Op::Redeem, 410, &err("expired")).0, Outcome::Expired);
        assert_eq!(classify(Op::Redeem, 422, &err("not_applicable")).0, Outcome::NotApplicable);
        assert_eq!(classify(Op::Redeem, 409, &err("already_claimed")).0, Outcome::ClientError);
        assert_eq!(classify(Op::Redeem, 201, b"{}").0, Outcome::ClientError);
    }
}
