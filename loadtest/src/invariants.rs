//! The checks run after a scenario, each a pure function of what the client
//! saw ([`RunResult`]), what the stats API reports (read once the run is
//! over, so no claim is in flight) and, when given, what the database holds
//! ([`DbFacts`]). Every check has a stable name: the exit message names the
//! first broken one.
//!
//! Campaigns of the harness have `per_user_limit` 1. When every user's fate
//! is known, the store must hold exactly `min(stock, users reached)` grants
//! and the client must have seen each of them. A user whose only non-answers
//! were ambiguous (503, other 5xx, timeout, broken connection) may or may not
//! hold a coupon, and one refused with 429 may hold none although stock was
//! left; with such users the equalities become bounds and say so. A 409
//! `already_claimed` tells the client that the user holds a coupon even when
//! its 201 was lost.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::api::Stats;
use crate::engine::{RunResult, flag};
use crate::outcome::{Op, Outcome};

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
    /// User id of each user index.
    pub user_ids: &'a [String],
    /// Discount every redemption must get (fixed coupon, order above it).
    pub discount_cents: i64,
}

/// What the users' flag bytes add up to.
#[derive(Debug, Default, PartialEq)]
pub struct Users {
    pub reached: u64,
    /// Users known to hold a coupon (a 201, or a 409 saying so).
    pub holders: u64,
    /// Users with a 409 "you hold one" but neither a 201 nor an ambiguous answer.
    pub held_unexplained: u64,
    /// Users that may hold a coupon unseen: ambiguous answers only.
    pub unknown: u64,
    /// Users refused with 429 and nothing better.
    pub limited: u64,
}

pub fn users(flags: &[u8]) -> Users {
    let mut u = Users::default();
    for f in flags.iter().copied().filter(|f| f & flag::REACHED != 0) {
        u.reached += 1;
        if f & (flag::GRANTED | flag::HELD) != 0 {
            u.holders += 1;
            if f & (flag::GRANTED | flag::AMBIGUOUS) == 0 {
                u.held_unexplained += 1;
            }
        } else if f & flag::AMBIGUOUS != 0 {
            u.unknown += 1;
        } else if f & flag::LIMITED != 0 {
            u.limited += 1;
        }
    }
    u
}

/// The checks through the API: the claim answers against the stats.
pub fn verify(e: &Expect<'_>, run: &RunResult, stats: &Stats) -> Vec<Check> {
    let count = |o: Outcome| run.count(Op::Claim, o);
    let seen = count(Outcome::Granted);
    let ambiguous: u64 = Outcome::ALL.iter().filter(|o| o.ambiguous()).map(|o| count(*o)).sum();
    let u = users(&run.users);
    let expected = e.stock.min(u.reached);
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

    let exact = u.unknown == 0 && u.limited == 0;
    out.push(if exact {
        check(
            "grants_equal_min_stock_users",
            stats.claimed == expected,
            format!(
                "claimed {} vs min(stock {}, distinct users reached {}) = {expected}",
                stats.claimed, e.stock, u.reached
            ),
        )
    } else {
        check(
            "grants_equal_min_stock_users",
            stats.claimed <= expected && u.holders <= stats.claimed && stats.claimed <= u.holders + u.unknown,
            format!(
                "bounds only ({} users with ambiguous answers only, {} rate-limited): {} known holders <= claimed {} <= min({expected}, {})",
                u.unknown,
                u.limited,
                u.holders,
                stats.claimed,
                u.holders + u.unknown
            ),
        )
    });
    let grants_ok = if ambiguous == 0 { seen == stats.claimed } else { seen <= stats.claimed };
    out.push(check(
        "every_grant_seen",
        grants_ok && u.held_unexplained == 0,
        if u.held_unexplained > 0 {
            format!(
                "{} users were told they hold a coupon they never got (no 201, no ambiguous answer)",
                u.held_unexplained
            )
        } else {
            format!("201s seen {seen}, claimed in store {}, ambiguous answers {ambiguous}", stats.claimed)
        },
    ));

    let mut ids = HashSet::with_capacity(run.grants.len());
    let mut missing = 0u64;
    let mut dup: Option<&str> = None;
    for g in &run.grants {
        match &g.coupon_id {
            None => missing += 1,
            Some(id) => {
                if !ids.insert(id.as_str()) && dup.is_none() {
                    dup = Some(id);
                }
            }
        }
    }
    out.push(check(
        "distinct_coupon_ids",
        missing == 0 && dup.is_none(),
        match (dup, missing) {
            (Some(d), _) => format!("coupon id {d} granted twice"),
            (None, m) if m > 0 => format!("{m} grants without a coupon id"),
            _ => format!("{} distinct ids", ids.len()),
        },
    ));

    let mut per_user: HashMap<u32, u32> = HashMap::with_capacity(run.grants.len());
    let mut twice: Option<u32> = None;
    let mut foreign: Option<(u32, String)> = None;
    for g in &run.grants {
        let n = per_user.entry(g.user).or_default();
        *n += 1;
        if *n > 1 && twice.is_none() {
            twice = Some(g.user);
        }
        let mine = &e.user_ids[g.user as usize];
        if g.owner.as_deref() != Some(mine.as_str()) && foreign.is_none() {
            foreign = Some((g.user, g.owner.clone().unwrap_or_default()));
        }
    }
    let tappers = run.users.iter().filter(|f| *f & flag::DOUBLE_TAPPED != 0).count();
    out.push(check(
        "no_user_over_limit",
        twice.is_none(),
        match twice {
            Some(u) => format!("user {} was granted twice (limit 1)", e.user_ids[u as usize]),
            None => format!("no user granted twice ({tappers} users double-tapped)"),
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

/// `persisted == claimed` within the timeout after the load.
pub fn persistence(stats: &Stats, converged_after_s: Option<f64>, timeout_s: f64) -> Check {
    check(
        "persisted_equals_claimed",
        converged_after_s.is_some() && stats.persisted == stats.claimed,
        match converged_after_s {
            Some(t) => format!("persisted {} == claimed {} {t:.2} s after the load", stats.persisted, stats.claimed),
            None => {
                format!("persisted {} vs claimed {} still after {timeout_s:.0} s", stats.persisted, stats.claimed)
            }
        },
    )
}

/// One sampled user's coupons as `GET /v1/me/coupons` lists them.
pub struct Holding {
    pub user: u32,
    pub listed: Result<Vec<String>, String>,
}

/// The API's view of a sample of users: nobody holds more than one coupon,
/// and a user who got a 201 holds exactly that coupon.
pub fn holdings(e: &Expect<'_>, run: &RunResult, sample: &[Holding]) -> Check {
    let mut granted: HashMap<u32, &str> = HashMap::new();
    for g in &run.grants {
        if let Some(id) = &g.coupon_id {
            granted.insert(g.user, id);
        }
    }
    let mut problem = None;
    for h in sample {
        let who = &e.user_ids[h.user as usize];
        let p = match (&h.listed, granted.get(&h.user)) {
            (Err(err), _) => Some(format!("GET /v1/me/coupons as {who}: {err}")),
            (Ok(list), _) if list.len() > 1 => Some(format!("user {who} holds {} coupons: {list:?}", list.len())),
            (Ok(list), Some(id)) if list.first().map(String::as_str) != Some(*id) => {
                Some(format!("user {who} got coupon {id} but holds {list:?}"))
            }
            _ => None,
        };
        if p.is_some() {
            problem = p;
            break;
        }
    }
    check(
        "api_user_holdings",
        problem.is_none(),
        problem.unwrap_or_else(|| format!("{} users checked, each holds at most its own coupon", sample.len())),
    )
}

/// The redemptions against the stats: one per coupon, the documented
/// discount, idempotent replays.
pub fn redemptions(e: &Expect<'_>, run: &RunResult, stats: &Stats) -> Vec<Check> {
    let count = |o: Outcome| run.count(Op::Redeem, o);
    let ambiguous: u64 = Outcome::ALL.iter().filter(|o| o.ambiguous()).map(|o| count(*o)).sum();
    let firsts: Vec<_> = run.redemptions.iter().filter(|r| !r.replay).collect();
    let distinct: HashSet<&str> = run.redemptions.iter().map(|r| r.coupon_id.as_str()).collect();
    let mut out = Vec::new();

    let unexpected: u64 =
        [Outcome::AlreadyRedeemed, Outcome::CouponNotFound, Outcome::ClientError].iter().map(|o| count(*o)).sum();
    out.push(check(
        "redeem_answers",
        unexpected == 0,
        format!(
            "{} redeemed, {unexpected} unexpected (409 already_redeemed / 404 / other 4xx for the caller's own coupon and order)",
            count(Outcome::Redeemed)
        ),
    ));
    let wrong = run.redemptions.iter().find(|r| {
        r.discount_cents != Some(e.discount_cents)
            || r.answered_coupon.as_deref() != Some(r.coupon_id.as_str())
            || r.order_id.as_deref() != Some(crate::engine::order_id(&r.coupon_id).as_str())
    });
    out.push(check(
        "redeem_discount",
        wrong.is_none(),
        match wrong {
            Some(r) => format!(
                "coupon {}: answered coupon {:?}, order {:?}, discount {:?} (expected {})",
                r.coupon_id, r.answered_coupon, r.order_id, r.discount_cents, e.discount_cents
            ),
            None => format!("every redemption: its coupon, its order, {} cents", e.discount_cents),
        },
    ));
    let exact = ambiguous == 0;
    let n = distinct.len() as u64;
    out.push(check(
        "redeemed_equals_stats",
        if exact {
            stats.redeemed == n && stats.discount_total_cents == n as i64 * e.discount_cents
        } else {
            stats.redeemed >= n
        },
        format!(
            "stats redeemed {} (discount total {}) vs {n} coupons redeemed ({} first redemptions, {ambiguous} ambiguous answers)",
            stats.redeemed,
            stats.discount_total_cents,
            firsts.len()
        ),
    ));
    out
}

/// What the database holds for the campaign (see `db`).
#[derive(Debug, Default)]
pub struct DbFacts {
    pub rows: u64,
    pub distinct_ids: u64,
    /// A user with more rows than the limit, and how many.
    pub over_limit: Option<(String, u64)>,
    pub ids: HashSet<String>,
    /// Coupons with status `redeemed`.
    pub redeemed: u64,
    pub discount_total_cents: i64,
}

/// The checks against the database, after the pipeline caught up.
pub fn database(run: &RunResult, stats: &Stats, db: &DbFacts, redeem: bool) -> Vec<Check> {
    let mut out = vec![
        check(
            "db_rows_equal_claimed",
            db.rows == stats.claimed,
            format!("{} rows vs claimed {}", db.rows, stats.claimed),
        ),
        check(
            "db_distinct_coupon_ids",
            db.rows == db.distinct_ids,
            format!("{} rows, {} distinct ids", db.rows, db.distinct_ids),
        ),
        check(
            "db_no_user_over_limit",
            db.over_limit.is_none(),
            match &db.over_limit {
                Some((u, n)) => format!("user {u} has {n} rows (limit 1)"),
                None => "no user has more than one row".to_owned(),
            },
        ),
    ];
    let lost = run.grants.iter().filter_map(|g| g.coupon_id.as_deref()).find(|id| !db.ids.contains(*id));
    out.push(check(
        "db_every_201_has_a_row",
        lost.is_none(),
        match lost {
            Some(id) => format!("coupon {id} was answered 201 and has no row"),
            None => format!("{} coupons answered 201, all in the database", run.grants.len()),
        },
    ));
    if redeem {
        out.push(check(
            "db_redeemed_equals_stats",
            db.redeemed == stats.redeemed && db.discount_total_cents == stats.discount_total_cents,
            format!(
                "{} redeemed rows ({} cents) vs stats {} ({} cents)",
                db.redeemed, db.discount_total_cents, stats.redeemed, stats.discount_total_cents
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::{Grant, Redemption};
    use crate::report::Hists;

    fn run(grants: Vec<Grant>, counts: &[(Outcome, u64)], flags: Vec<u8>) -> RunResult {
        let mut c = [[0u64; Outcome::COUNT]; Op::COUNT];
        for (o, n) in counts {
            c[Op::Claim.index()][o.index()] = *n;
        }
        RunResult {
            elapsed: Duration::from_secs(1),
            counts: c,
            hists: Hists::default(),
            grants,
            redemptions: Vec::new(),
            users: flags,
            seconds: Vec::new(),
            arrivals: 0,
            last_grant: None,
            first_sold_out: None,
            abandoned: 0,
            samples: Vec::new(),
            per_target: Vec::new(),
        }
    }

    fn grant(user: u32, id: &str) -> Grant {
        Grant { user, coupon_id: Some(id.into()), owner: Some(format!("u{user}")) }
    }

    fn stats(total: u64, remaining: u64, claimed: u64) -> Stats {
        Stats { total_stock: total, remaining, claimed, persisted: claimed, ..Stats::default() }
    }

    fn failed(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    const R: u8 = flag::REACHED;

    fn ids(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("u{i}")).collect()
    }

    #[test]
    fn a_clean_sold_out_drop_holds() {
        let ids = ids(4);
        let e = Expect { stock: 2, user_ids: &ids, discount_cents: 500 };
        let flags = vec![R | flag::GRANTED, R | flag::GRANTED | flag::HELD | flag::DOUBLE_TAPPED, R, R];
        let r = run(
            vec![grant(0, "A"), grant(1, "B")],
            &[(Outcome::Granted, 2), (Outcome::AlreadyClaimed, 1), (Outcome::SoldOut, 2)],
            flags,
        );
        assert_eq!(failed(&verify(&e, &r, &stats(2, 0, 2))), Vec::<&str>::new());
    }

    #[test]
    fn names_what_broke() {
        let ids = ids(4);
        let e = Expect { stock: 3, user_ids: &ids, discount_cents: 500 };
        let mut stolen = grant(2, "A");
        stolen.owner = Some("u3".into());
        let flags = vec![R | flag::GRANTED, R, R | flag::GRANTED, R];
        let r = run(vec![grant(0, "A"), grant(0, "B"), stolen], &[(Outcome::Granted, 3), (Outcome::SoldOut, 1)], flags);
        assert_eq!(
            failed(&verify(&e, &r, &stats(3, 1, 3))),
            vec!["remaining_plus_claimed", "distinct_coupon_ids", "no_user_over_limit", "coupon_owner_is_caller"]
        );
    }

    #[test]
    fn stock_left_while_users_went_away_empty_is_unfair() {
        let ids = ids(4);
        let e = Expect { stock: 4, user_ids: &ids, discount_cents: 500 };
        // Four users reached, all answered definitely, only three grants.
        let flags = vec![R | flag::GRANTED, R | flag::GRANTED, R | flag::GRANTED, R];
        let r = run(
            vec![grant(0, "A"), grant(1, "B"), grant(2, "C")],
            &[(Outcome::Granted, 3), (Outcome::SoldOut, 1)],
            flags,
        );
        assert_eq!(failed(&verify(&e, &r, &stats(4, 1, 3))), vec!["grants_equal_min_stock_users"]);
    }

    #[test]
    fn ambiguous_answers_turn_equalities_into_bounds() {
        let ids = ids(4);
        let e = Expect { stock: 4, user_ids: &ids, discount_cents: 500 };
        let flags = vec![R | flag::GRANTED, R | flag::GRANTED, R | flag::AMBIGUOUS, R | flag::AMBIGUOUS];
        let r = run(vec![grant(0, "A"), grant(1, "B")], &[(Outcome::Granted, 2), (Outcome::Timeout, 2)], flags);
        assert!(failed(&verify(&e, &r, &stats(4, 1, 3))).is_empty());
        // More claimed than known holders plus unknowns: broken.
        let flags = vec![R | flag::GRANTED, R | flag::GRANTED, R | flag::AMBIGUOUS, R];
        let r = run(vec![grant(0, "A"), grant(1, "B")], &[(Outcome::Granted, 2), (Outcome::Timeout, 1)], flags);
        assert_eq!(failed(&verify(&e, &r, &stats(4, 0, 4))), vec!["grants_equal_min_stock_users"]);
    }

    #[test]
    fn a_held_coupon_without_a_grant_or_an_ambiguous_answer_is_a_lost_201() {
        let ids = ids(2);
        let e = Expect { stock: 2, user_ids: &ids, discount_cents: 500 };
        let r = run(
            vec![grant(0, "A")],
            &[(Outcome::Granted, 1), (Outcome::AlreadyClaimed, 1)],
            vec![R | flag::GRANTED, R | flag::HELD],
        );
        assert_eq!(failed(&verify(&e, &r, &stats(2, 0, 2))), vec!["every_grant_seen"]);
        // The same after a timeout is explained: the timed-out claim was granted.
        let r = run(
            vec![grant(0, "A")],
            &[(Outcome::Granted, 1), (Outcome::AlreadyClaimed, 1), (Outcome::Timeout, 1)],
            vec![R | flag::GRANTED, R | flag::HELD | flag::AMBIGUOUS],
        );
        assert!(failed(&verify(&e, &r, &stats(2, 0, 2))).is_empty());
    }

    #[test]
    fn persistence_needs_convergence() {
        assert!(persistence(&stats(2, 0, 2), Some(0.3), 30.0).ok);
        let mut s = stats(2, 0, 2);
        s.persisted = 1;
        assert!(!persistence(&s, None, 30.0).ok);
    }

    #[test]
    fn holdings_catch_a_second_coupon_and_a_wrong_one() {
        let ids = ids(3);
        let e = Expect { stock: 3, user_ids: &ids, discount_cents: 500 };
        let r = run(vec![grant(0, "A"), grant(1, "B")], &[(Outcome::Granted, 2)], vec![R; 3]);
        let ok = [Holding { user: 0, listed: Ok(vec!["A".into()]) }, Holding { user: 2, listed: Ok(vec![]) }];
        assert!(holdings(&e, &r, &ok).ok);
        assert!(!holdings(&e, &r, &[Holding { user: 1, listed: Ok(vec!["B".into(), "C".into()]) }]).ok);
        assert!(!holdings(&e, &r, &[Holding { user: 1, listed: Ok(vec!["C".into()]) }]).ok);
        assert!(!holdings(&e, &r, &[Holding { user: 1, listed: Err("503".into()) }]).ok);
    }

    fn redemption(coupon: &str, discount: i64, replay: bool) -> Redemption {
        Redemption {
            coupon_id: coupon.into(),
            answered_coupon: Some(coupon.into()),
            order_id: Some(crate::engine::order_id(coupon)),
            discount_cents: Some(discount),
            replay,
        }
    }

    #[test]
    fn redemptions_count_once_with_their_discount() {
        let ids = ids(2);
        let e = Expect { stock: 2, user_ids: &ids, discount_cents: 500 };
        let mut r = run(vec![], &[], vec![]);
        r.counts[Op::Redeem.index()][Outcome::Redeemed.index()] = 3;
        r.redemptions = vec![redemption("A", 500, false), redemption("A", 500, true), redemption("B", 500, false)];
        let mut s = stats(2, 0, 2);
        s.redeemed = 2;
        s.discount_total_cents = 1000;
        assert!(failed(&redemptions(&e, &r, &s)).is_empty());
        r.redemptions[1].discount_cents = Some(400);
        r.counts[Op::Redeem.index()][Outcome::AlreadyRedeemed.index()] = 1;
        s.redeemed = 3;
        assert_eq!(
            failed(&redemptions(&e, &r, &s)),
            vec!["redeem_answers", "redeem_discount", "redeemed_equals_stats"]
        );
    }

    #[test]
    fn database_facts_against_the_run() {
        let r = run(vec![grant(0, "A"), grant(1, "B")], &[(Outcome::Granted, 2)], vec![R; 2]);
        let mut db =
            DbFacts { rows: 2, distinct_ids: 2, ids: ["A", "B"].map(String::from).into(), ..DbFacts::default() };
        assert!(failed(&database(&r, &stats(2, 0, 2), &db, true)).is_empty());
        db.ids.remove("B");
        db.rows = 3;
        db.over_limit = Some(("u0".into(), 2));
        assert_eq!(
            failed(&database(&r, &stats(2, 0, 2), &db, false)),
            vec!["db_rows_equal_claimed", "db_distinct_coupon_ids", "db_no_user_over_limit", "db_every_201_has_a_row"]
        );
    }

    #[test]
    fn users_add_up() {
        let flags = [
            0,
            R | flag::GRANTED,
            R | flag::HELD | flag::AMBIGUOUS,
            R | flag::AMBIGUOUS,
            R | flag::LIMITED,
            R | flag::HELD,
            R,
        ];
        assert_eq!(users(&flags), Users { reached: 6, holders: 3, held_unexplained: 1, unknown: 1, limited: 1 });
    }
}
