//! The checks run after a drop, against what the client saw and what the
//! stats API reports (read once the run is over, so no claim is in flight).
//!
//! The campaign has `per_user_limit` 1. When every request got a definite
//! answer, the store must hold exactly `min(stock, users reached)` grants and
//! the client must have seen each of them as a 201. When some answers were
//! ambiguous (503, other 5xx, timeout, broken connection) or rate limited,
//! the exact counts cannot be known from outside; the checks then become
//! bounds and say so.

use std::collections::HashSet;

use serde::Serialize;

use crate::api::Stats;
use crate::engine::RunResult;
use crate::outcome::Outcome;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, ok: bool, detail: String) -> Check {
    Check { name, ok, detail }
}

/// What the run asked for.
pub struct Expect<'a> {
    pub stock: u64,
    pub users: u32,
    /// `Bearer`-less user id of each user index.
    pub user_ids: &'a [String],
}

pub fn verify(e: &Expect<'_>, run: &RunResult, stats: &Stats) -> Vec<Check> {
    let count = |o: Outcome| run.counts[o.index()];
    let seen = count(Outcome::Granted);
    let ambiguous: u64 = Outcome::ALL.iter().filter(|o| o.ambiguous()).map(|o| count(*o)).sum();
    let limited = count(Outcome::RateLimited);
    let reached = run.sent().min(u64::from(e.users));
    let expected = e.stock.min(reached);
    let mut out = Vec::new();

    out.push(check(
        "total_stock",
        stats.total_stock == e.stock,
        format!("store {} vs asked {}", stats.total_stock, e.stock),
    ));
    out.push(check(
        "remaining_plus_claimed",
        stats.remaining + stats.claimed == stats.total_stock,
        format!(
            "{} + {} = {} vs total_stock {}",
            stats.remaining,
            stats.claimed,
            stats.remaining + stats.claimed,
            stats.total_stock
        ),
    ));

    let exact = ambiguous == 0 && limited == 0;
    out.push(if exact {
        check(
            "grants_equal_min_stock_users",
            stats.claimed == expected,
            format!("claimed {} vs min(stock {}, users reached {reached}) = {expected}", stats.claimed, e.stock),
        )
    } else {
        check(
            "grants_equal_min_stock_users",
            stats.claimed <= expected,
            format!(
                "bound only ({ambiguous} ambiguous, {limited} rate-limited answers): claimed {} <= {expected}",
                stats.claimed
            ),
        )
    });
    out.push(check(
        "every_grant_seen",
        if exact { seen == stats.claimed } else { seen <= stats.claimed && stats.claimed <= seen + ambiguous },
        format!("201s seen {seen}, claimed in store {}, ambiguous answers {ambiguous}", stats.claimed),
    ));

    let mut ids = HashSet::with_capacity(run.grants.len());
    let mut missing = 0u64;
    let mut dup: Option<String> = None;
    for g in &run.grants {
        match &g.coupon_id {
            None => missing += 1,
            Some(id) => {
                if !ids.insert(id.as_str()) && dup.is_none() {
                    dup = Some(id.clone());
                }
            }
        }
    }
    out.push(check(
        "distinct_coupon_ids",
        missing == 0 && dup.is_none(),
        match (&dup, missing) {
            (Some(d), _) => format!("coupon id {d} granted twice"),
            (None, m) if m > 0 => format!("{m} grants without a coupon id"),
            _ => format!("{} distinct ids", ids.len()),
        },
    ));

    let mut granted = vec![0u8; e.users as usize];
    let mut twice: Option<u32> = None;
    let mut foreign: Option<(u32, String)> = None;
    for g in &run.grants {
        let n = &mut granted[g.user as usize];
        *n = n.saturating_add(1);
        if *n > 1 && twice.is_none() {
            twice = Some(g.user);
        }
        let mine = &e.user_ids[g.user as usize];
        if g.owner.as_deref() != Some(mine.as_str()) && foreign.is_none() {
            foreign = Some((g.user, g.owner.clone().unwrap_or_default()));
        }
    }
    out.push(check(
        "one_grant_per_user",
        twice.is_none(),
        match twice {
            Some(u) => format!("user {} was granted twice", e.user_ids[u as usize]),
            None => "no user granted twice".to_owned(),
        },
    ));
    out.push(check(
        "coupon_owner_is_caller",
        foreign.is_none(),
        match &foreign {
            Some((u, owner)) => format!("user {} got a coupon of {owner:?}", e.user_ids[*u as usize]),
            None => "every coupon names its caller".to_owned(),
        },
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::Grant;
    use crate::report::Hists;

    fn run(grants: Vec<Grant>, counts: &[(Outcome, u64)]) -> RunResult {
        let mut c = [0u64; Outcome::COUNT];
        for (o, n) in counts {
            c[o.index()] = *n;
        }
        RunResult { elapsed: Duration::from_secs(1), counts: c, hists: Hists::default(), grants, samples: Vec::new() }
    }

    fn grant(user: u32, id: &str) -> Grant {
        Grant { user, coupon_id: Some(id.into()), owner: Some(format!("u{user}")) }
    }

    fn failed(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    #[test]
    fn a_clean_sold_out_drop_holds() {
        let ids: Vec<String> = (0..4).map(|i| format!("u{i}")).collect();
        let e = Expect { stock: 2, users: 4, user_ids: &ids };
        let r = run(vec![grant(0, "A"), grant(1, "B")], &[(Outcome::Granted, 2), (Outcome::SoldOut, 2)]);
        let stats = Stats { total_stock: 2, remaining: 0, claimed: 2 };
        assert!(failed(&verify(&e, &r, &stats)).is_empty());
    }

    #[test]
    fn names_what_broke() {
        let ids: Vec<String> = (0..4).map(|i| format!("u{i}")).collect();
        let e = Expect { stock: 3, users: 4, user_ids: &ids };
        let mut stolen = grant(2, "A");
        stolen.owner = Some("u3".into());
        let r = run(vec![grant(0, "A"), grant(0, "B"), stolen], &[(Outcome::Granted, 3), (Outcome::SoldOut, 1)]);
        let stats = Stats { total_stock: 3, remaining: 1, claimed: 3 };
        assert_eq!(
            failed(&verify(&e, &r, &stats)),
            vec!["remaining_plus_claimed", "distinct_coupon_ids", "one_grant_per_user", "coupon_owner_is_caller"]
        );
    }

    #[test]
    fn ambiguous_answers_turn_equalities_into_bounds() {
        let ids: Vec<String> = (0..4).map(|i| format!("u{i}")).collect();
        let e = Expect { stock: 4, users: 4, user_ids: &ids };
        let r = run(vec![grant(0, "A"), grant(1, "B")], &[(Outcome::Granted, 2), (Outcome::Timeout, 2)]);
        let stats = Stats { total_stock: 4, remaining: 1, claimed: 3 };
        assert!(failed(&verify(&e, &r, &stats)).is_empty());
    }
}
