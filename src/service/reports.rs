//! The campaign report marketing reads after a drop: how fast it went, how
//! many coupons were used and what they cost.
//!
//! Live counts (remaining, claimed) come from the stock store like the
//! stats; everything over time and per product comes from the persisted rows
//! (the claim timeline counts persisted claims, which trail the grants by
//! the pipeline's lag).

use chrono::{DateTime, Utc};

use super::{CampaignService, CampaignStats, Result};
use crate::db::Db;
use crate::db::reports::{ClaimTimeline, Dimension, TopEntry};
use crate::domain::CampaignId;

/// Entries in each top list.
pub const TOP: u32 = 10;

#[derive(Debug, Clone)]
pub struct CampaignReport {
    pub stats: CampaignStats,
    pub timeline: ClaimTimeline,
    /// From `starts_at` to the last grant, when every unit is gone.
    pub sold_out_after_ms: Option<i64>,
    /// Redeemed coupons per claimed coupon (0 when nothing was claimed).
    pub redemption_rate: f64,
    pub top_products: Vec<TopEntry>,
    pub top_categories: Vec<TopEntry>,
}

/// Time to sell out: only for a campaign with nothing left and a last
/// claim on record.
pub fn sold_out_after(starts_at: DateTime<Utc>, remaining: u64, last_claim: Option<DateTime<Utc>>) -> Option<i64> {
    match (remaining, last_claim) {
        (0, Some(last)) => Some((last - starts_at).num_milliseconds().max(0)),
        _ => None,
    }
}

pub fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

#[derive(Clone)]
pub struct ReportService {
    campaigns: CampaignService,
    db: Db,
    /// Slots of [`CSV_EXPORTS`].
    exports: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Chunks of the CSV export in flight between the query and the client,
/// at most (each about [`CSV_CHUNK`] bytes): the query waits for a slow
/// client instead of buffering.
const CSV_CHUNKS_IN_FLIGHT: usize = 4;
/// Bytes of CSV per chunk sent.
const CSV_CHUNK: usize = 64 * 1024;
/// Exports running at once per instance, at most: each holds a MySQL
/// connection for as long as its client reads, and the pool is shared
/// with everything else (one more is refused with 503).
pub const CSV_EXPORTS: usize = 2;

/// The CSV export as it is produced: chunks, or the error that cut it.
pub type CsvChunks = tokio::sync::mpsc::Receiver<std::result::Result<bytes::Bytes, crate::db::DbError>>;

impl ReportService {
    pub fn new(campaigns: CampaignService, db: Db) -> Self {
        Self { campaigns, db, exports: std::sync::Arc::new(tokio::sync::Semaphore::new(CSV_EXPORTS)) }
    }

    /// The persisted claims of `id` as CSV (`db::exports`), produced by a
    /// task that streams the rows from MySQL into a small bounded channel;
    /// dropping the receiver (the client went away) stops the query. At
    /// most [`CSV_EXPORTS`] at once (then `Shed`: 503). `None`: no such
    /// campaign.
    pub async fn claims_csv(&self, id: &CampaignId, now: DateTime<Utc>) -> Result<Option<CsvChunks>> {
        if self.db.get_campaign(id).await?.is_none() {
            return Ok(None);
        }
        let slot = self.exports.clone().try_acquire_owned().map_err(|_| crate::protect::admission::Shed)?;
        let (tx, rx) = tokio::sync::mpsc::channel(CSV_CHUNKS_IN_FLIGHT);
        let (db, id) = (self.db.clone(), id.clone());
        tokio::spawn(async move {
            let _slot = slot;
            use futures_util::StreamExt;
            let mut out = String::with_capacity(CSV_CHUNK + 256);
            out.push_str(crate::db::exports::CSV_HEADER);
            let mut rows = std::pin::pin!(db.export_rows(id.as_str()));
            while let Some(row) = rows.next().await {
                match row {
                    Ok(r) => r.write_csv(&mut out, now),
                    Err(e) => {
                        tracing::warn!(error = %e, campaign = %id, "claims export cut short");
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                if out.len() >= CSV_CHUNK {
                    let chunk = bytes::Bytes::from(std::mem::replace(&mut out, String::with_capacity(CSV_CHUNK + 256)));
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(bytes::Bytes::from(out))).await;
        });
        Ok(Some(rx))
    }

    pub async fn report(&self, id: &CampaignId, now: DateTime<Utc>) -> Result<Option<CampaignReport>> {
        let Some(stats) = self.campaigns.stats(id, now).await? else {
            return Ok(None);
        };
        let (timeline, products, categories) = tokio::join!(
            self.db.claim_timeline(id.as_str()),
            self.db.top_redeemed(id.as_str(), Dimension::Product, TOP),
            self.db.top_redeemed(id.as_str(), Dimension::Category, TOP),
        );
        let timeline = timeline?;
        let starts_at = stats.view.campaign.starts_at;
        Ok(Some(CampaignReport {
            sold_out_after_ms: sold_out_after(starts_at, stats.remaining, timeline.last_claim_at),
            redemption_rate: rate(stats.redeemed, stats.claimed),
            timeline,
            top_products: products?,
            top_categories: categories?,
            stats,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sell_out_time_needs_an_empty_campaign() {
        let start = DateTime::from_timestamp_millis(1_000_000).unwrap();
        let last = DateTime::from_timestamp_millis(1_004_500).unwrap();
        assert_eq!(sold_out_after(start, 0, Some(last)), Some(4500));
        assert_eq!(sold_out_after(start, 3, Some(last)), None);
        assert_eq!(sold_out_after(start, 0, None), None);
        assert_eq!(rate(1, 4), 0.25);
        assert_eq!(rate(0, 0), 0.0);
    }
}
