//! The claims of a campaign as CSV rows, streamed from MySQL
//! (`GET /v1/campaigns/{id}/claims.csv`).
//!
//! Rows come through sqlx's `fetch` (the result set is read from the
//! socket as the consumer asks for it): a million-row export never sits in
//! memory, here or in the driver. Order: the campaign's index (status,
//! then coupon id), so no sort.

use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use sqlx::Row;

use super::{Db, Result};

/// The header of the export (API.md, "Additions").
pub const CSV_HEADER: &str = "coupon_id,user_id,claimed_at,status,order_id,redeemed_at,discount_cents\n";

/// One persisted claim as the export shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    pub coupon_id: String,
    pub user_id: String,
    pub claimed_at: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub redeemed: bool,
    pub order_id: Option<String>,
    pub redeemed_at: Option<DateTime<Utc>>,
    pub discount_cents: Option<i64>,
}

impl Db {
    /// Every coupon row of `campaign`, one at a time.
    pub fn export_rows<'a>(&'a self, campaign: &'a str) -> impl Stream<Item = Result<ExportRow>> + Send + 'a {
        sqlx::query(
            "SELECT id, user_id, claimed_at, valid_until, status, order_id, redeemed_at, discount_cents \
             FROM coupons WHERE campaign_id = ?",
        )
        .bind(campaign)
        .fetch(self.pool())
        .map(|row| {
            let r = row?;
            let status: String = r.try_get("status")?;
            Ok(ExportRow {
                coupon_id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                claimed_at: r.try_get("claimed_at")?,
                valid_until: r.try_get("valid_until")?,
                redeemed: status == "redeemed",
                order_id: r.try_get("order_id")?,
                redeemed_at: r.try_get("redeemed_at")?,
                discount_cents: r.try_get("discount_cents")?,
            })
        })
    }
}

/// One CSV field: quoted when it holds a separator, a quote or a line
/// break; a leading `=`, `+`, `-` or `@` (a spreadsheet formula: user ids
/// and order ids come from outside) is defused with a `'`.
pub fn csv_field(out: &mut String, v: &str) {
    let formula = v.starts_with(['=', '+', '-', '@']);
    if formula || v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        if formula {
            out.push('\'');
        }
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

impl ExportRow {
    /// Appends the row as one CSV line; `status` is `expired` for a coupon
    /// not redeemed by its `valid_until` (as the app shows it).
    pub fn write_csv(&self, out: &mut String, now: DateTime<Utc>) {
        let rfc3339 = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let status = match (self.redeemed, now >= self.valid_until) {
            (true, _) => "redeemed",
            (false, true) => "expired",
            (false, false) => "claimed",
        };
        csv_field(out, &self.coupon_id);
        out.push(',');
        csv_field(out, &self.user_id);
        out.push(',');
        out.push_str(&rfc3339(self.claimed_at));
        out.push(',');
        out.push_str(status);
        out.push(',');
        if self.redeemed {
            csv_field(out, self.order_id.as_deref().unwrap_or(""));
            out.push(',');
            out.push_str(&self.redeemed_at.map(&rfc3339).unwrap_or_default());
            out.push(',');
            out.push_str(&self.discount_cents.map(|d| d.to_string()).unwrap_or_default());
        } else {
            out.push_str(",,");
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_and_formulas_defused() {
        let f = |v: &str| {
            let mut s = String::new();
            csv_field(&mut s, v);
            s
        };
        assert_eq!(f("u-1"), "u-1");
        assert_eq!(f("a,b"), "\"a,b\"");
        assert_eq!(f("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(f("=HYPERLINK(1)"), "\"'=HYPERLINK(1)\"");
        assert_eq!(f("-1"), "\"'-1\"");
    }
}
