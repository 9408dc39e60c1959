//! The Redis Cluster side of a benchmark: its masters and their slots,
//! the claim script loaded on each, the keys a run made unlinked again,
//! and the time Redis spent inside EVALSHA. Plain (non-cluster) connections
//! to one master at a time: every call here is about one master.

use anyhow::{Context, bail};
use flashgrab::stock::keys::key_slot;
use redis::Connection;

pub const HOST: &str = "127.0.0.1";
/// The seed node (`scripts/stack up`'s first master).
pub const SEED_PORT: u16 = 7000;

/// A master and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Master {
    pub port: u16,
    pub ranges: Vec<(u16, u16)>,
}

impl Master {
    pub fn owns(&self, slot: u16) -> bool {
        self.ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }
}

pub fn connect(port: u16) -> anyhow::Result<Connection> {
    redis::Client::open(format!("redis://{HOST}:{port}"))?
        .get_connection_with_timeout(std::time::Duration::from_secs(5))
        .with_context(|| format!("connecting to Redis on {HOST}:{port}"))
}

/// The healthy masters in `CLUSTER NODES` output, with their slot ranges
/// (importing/migrating entries `[...]` left out).
pub fn parse_nodes(nodes: &str) -> Vec<Master> {
    nodes
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() <= 8 || !f[2].contains("master") || f[2].contains("fail") {
                return None;
            }
            let port = f[1].split(['@']).next()?.rsplit(':').next()?.parse().ok()?;
            let ranges = f[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .filter_map(|r| match r.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => r.parse().ok().map(|s| (s, s)),
                })
                .collect();
            Some(Master { port, ranges })
        })
        .collect()
}

pub fn masters() -> anyhow::Result<Vec<Master>> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut connect(SEED_PORT)?)?;
    let m = parse_nodes(&nodes);
    if m.is_empty() {
        bail!("no master found in CLUSTER NODES of {HOST}:{SEED_PORT}");
    }
    Ok(m)
}

/// `cluster_state:ok` on the seed node.
pub fn healthy() -> bool {
    connect(SEED_PORT)
        .and_then(|mut c| Ok(redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c)?))
        .is_ok_and(|info| info.lines().any(|l| l.trim() == "cluster_state:ok"))
}

/// The first hash tag `<base>:<n>` whose slot the master owns.
pub fn tag_on(master: &Master, base: &str) -> Option<String> {
    (0..10_000).map(|n| format!("{base}:{n}")).find(|t| master.owns(key_slot(t.as_bytes())))
}

/// SCANs every master for `pattern` and UNLINKs the keys; the count.
pub fn unlink_pattern(pattern: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for m in masters()? {
        let mut con = connect(m.port)?;
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut con)?
            .collect::<Result<_, _>>()?;
        // One UNLINK per key (a multi-key UNLINK must stay in one slot),
        // pipelined in chunks.
        for chunk in keys.chunks(1000) {
            let mut p = redis::pipe();
            for k in chunk {
                p.cmd("UNLINK").arg(k);
            }
            let n: Vec<u64> = p.query(&mut con)?;
            total += n.iter().sum::<u64>();
        }
    }
    Ok(total)
}

/// `calls` and `usec` of `cmdstat_evalsha` in INFO commandstats.
pub fn parse_evalsha(info: &str) -> (u64, u64) {
    let Some(line) = info.lines().find_map(|l| l.trim().strip_prefix("cmdstat_evalsha:")) else { return (0, 0) };
    let field =
        |name: &str| line.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok()).unwrap_or(0);
    (field("calls"), field("usec"))
}

/// EVALSHA calls and microseconds inside Redis, summed over the masters.
pub fn evalsha_stats() -> anyhow::Result<(u64, u64)> {
    let mut sum = (0, 0);
    for m in masters()? {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut connect(m.port)?)?;
        let (c, u) = parse_evalsha(&info);
        sum = (sum.0 + c, sum.1 + u);
    }
    Ok(sum)
}

/// `N EVALSHA, X us each inside Redis` between two [`evalsha_stats`].
pub fn per_call(before: (u64, u64), after: (u64, u64)) -> (u64, f64) {
    let n = after.0.saturating_sub(before.0);
    let us = after.1.saturating_sub(before.1);
    (n, if n > 0 { us as f64 / n as f64 } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_and_slots_from_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922 [10923->-c3]
c3 127.0.0.1:7002@17002 master,fail - 0 1 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 1 1 connected
e5 127.0.0.1:7005@17005 master - 0 1 7 connected 10923-16382 16383
";
        let m = parse_nodes(nodes);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0], Master { port: 7000, ranges: vec![(0, 5460)] });
        assert_eq!(m[1].ranges, vec![(5461, 10922)]);
        assert_eq!(m[2].port, 7005);
        assert!(m[2].owns(16383) && m[2].owns(10923) && !m[2].owns(0));
        let tag = tag_on(&m[0], "benchr1").unwrap();
        assert!(m[0].owns(key_slot(format!("{{{tag}}}:c:camp:0").as_bytes())));
    }

    #[test]
    fn evalsha_time_from_commandstats() {
        let info = "# Commandstats\r\ncmdstat_get:calls=3,usec=4\r\n\
                    cmdstat_evalsha:calls=200,usec=3500,usec_per_call=17.50,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(parse_evalsha(info), (200, 3500));
        assert_eq!(parse_evalsha("# Commandstats\r\n"), (0, 0));
        assert_eq!(per_call((100, 1000), (300, 4500)), (200, 17.5));
        assert_eq!(per_call((5, 5), (5, 5)), (0, 0.0));
    }
}
