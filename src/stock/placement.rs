//! Where a campaign's shards go.
//!
//! A Lua script only ever touches one slot, so the spread of a campaign over
//! the cluster is decided by which bucket (hash tag) each shard gets. We read
//! the live slot map (`CLUSTER SLOTS`), group the buckets by the master that
//! owns their slot, and deal shards round-robin over the masters, so that a
//! campaign with at least as many shards as masters has stock on every master
//! (no luck involved). The map is read at creation time only; if the cluster
//! is resharded later the keys move with their slots and stay correct, only
//! the spread may become uneven.

use std::collections::BTreeMap;

use redis::Value;

use super::keys::KeyLayout;

/// Which master owns which slots, as `CLUSTER SLOTS` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap {
    /// (first slot, last slot, "host:port" of the master), sorted by slot.
    ranges: Vec<(u16, u16, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("unexpected CLUSTER SLOTS reply: {0}")]
    BadReply(String),
    #[error("the cluster has no master owning any outbox bucket")]
    NoMasters,
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl SlotMap {
    pub fn from_ranges(mut ranges: Vec<(u16, u16, String)>) -> Self {
        ranges.sort();
        Self { ranges }
    }

    /// Parses the reply of `CLUSTER SLOTS`:
    /// `[[start, end, [host, port, id, ...], replicas...], ...]`.
    pub fn parse(reply: &Value) -> Result<Self, PlacementError> {
        let bad = || PlacementError::BadReply(format!("{reply:?}").chars().take(200).collect());
        let Value::Array(entries) = reply else {
            return Err(bad());
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for e in entries {
            let Value::Array(parts) = e else {
                return Err(bad());
            };
            let (Some(start), Some(end), Some(Value::Array(master))) =
                (parts.first().and_then(as_int), parts.get(1).and_then(as_int), parts.get(2))
            else {
                return Err(bad());
            };
            let host = master.first().and_then(as_text).ok_or_else(bad)?;
            let port = master.get(1).and_then(as_int).ok_or_else(bad)?;
            ranges.push((start as u16, end as u16, format!("{host}:{port}")));
        }
        Ok(Self::from_ranges(ranges))
    }

    pub fn master_of(&self, slot: u16) -> Option<&str> {
        self.ranges.iter().find(|(lo, hi, _)| (*lo..=*hi).contains(&slot)).map(|(_, _, m)| m.as_str())
    }

    /// Distinct masters, sorted.
    pub fn masters(&self) -> Vec<String> {
        let mut m: Vec<String> = self.ranges.iter().map(|(_, _, m)| m.clone()).collect();
        m.sort();
        m.dedup();
        m
    }
}

/// The shard count the service picks when marketing gave none: small drops
/// get one shard per master (less borrowing between shards), larger ones four
/// per master (more parallel scripts per node). Never more than the stock.
pub fn default_shards(total_stock: u64, masters: usize) -> u32 {
    let masters = masters.max(1) as u64;
    let wanted = if total_stock < masters * 100 { masters } else { masters * 4 };
    wanted.min(total_stock).clamp(1, 1024) as u32
}

/// Picks the bucket of each of `shards` shards. `seed` (derived from the
/// campaign id) rotates the choice so that campaigns spread over the buckets
/// of a master instead of all starting at the same one.
pub fn place_shards(layout: &KeyLayout, map: &SlotMap, shards: u32, seed: u64) -> Result<Vec<u16>, PlacementError> {
    let mut by_master: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    for b in 0..layout.buckets() {
        if let Some(m) = map.master_of(layout.bucket_slot(b)) {
            by_master.entry(m).or_default().push(b);
        }
    }
    let groups: Vec<&Vec<u16>> = by_master.values().collect();
    if groups.is_empty() {
        return Err(PlacementError::NoMasters);
    }
    let m = groups.len() as u64;
    Ok((0..u64::from(shards))
        .map(|i| {
            let group = groups[((i + seed) % m) as usize];
            group[((i / m + seed / m) % group.len() as u64) as usize]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_masters() -> SlotMap {
        SlotMap::from_ranges(vec![
            (0, 5460, "127.0.0.1:7000".into()),
            (5461, 10922, "127.0.0.1:7001".into()),
            (10923, 16383, "127.0.0.1:7002".into()),
        ])
    }

    #[test]
    fn shards_cover_every_master() {
        let layout = KeyLayout::new("fg");
        let map = three_masters();
        for seed in 0..50 {
            for shards in 3..20 {
                let buckets = place_shards(&layout, &map, shards, seed).unwrap();
                let mut masters: Vec<&str> =
                    buckets.iter().map(|b| map.master_of(layout.bucket_slot(*b)).unwrap()).collect();
                masters.sort();
                masters.dedup();
                assert_eq!(masters.len(), 3, "seed {seed} shards {shards}");
            }
        }
    }

    #[test]
    fn uneven_maps_still_place() {
        let layout = KeyLayout::new("fg");
        let map = SlotMap::from_ranges(vec![(0, 300, "a:1".into()), (301, 16383, "b:1".into())]);
        let buckets = place_shards(&layout, &map, 2, 0).unwrap();
        let masters: Vec<&str> = buckets.iter().map(|b| map.master_of(layout.bucket_slot(*b)).unwrap()).collect();
        assert!(masters.contains(&"a:1") && masters.contains(&"b:1"));
    }

    #[test]
    fn default_shards_bounds() {
        assert_eq!(default_shards(1, 3), 1);
        assert_eq!(default_shards(10, 3), 3);
        assert_eq!(default_shards(100_000, 3), 12);
    }

    #[test]
    fn parses_cluster_slots() {
        let node = |port| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7001), node(7004)]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node(7000), node(7003)]),
        ]);
        let map = SlotMap::parse(&reply).unwrap();
        assert_eq!(map.master_of(0), Some("127.0.0.1:7000"));
        assert_eq!(map.master_of(16383), Some("127.0.0.1:7001"));
        assert_eq!(map.masters().len(), 2);
    }
}
