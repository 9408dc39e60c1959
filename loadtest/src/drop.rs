//! The `drop` scenario: one campaign, many users, one coupon each.
//!
//! Steps: create the campaign (live at once, `per_user_limit` 1), mint one
//! JWT per user, run the claims (see `engine`), read the stats, print the
//! summary, check the invariants (see `invariants`), write the JSON report.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hyper::Uri;
use hyper::header::HeaderValue;

use crate::api::{self, CampaignSpec};
use crate::client::{self, Http};
use crate::engine::{self, Plan, Target};
use crate::invariants::{self, Expect};
use crate::report::{self, Report};
use crate::tokens;

#[derive(Args)]
pub struct DropArgs {
    /// Base URL of a flashgrab instance; repeat to spread the workers over
    /// several instances (the campaign is created on the first one).
    #[arg(long = "url", value_name = "URL", default_value = "http://127.0.0.1:8080")]
    urls: Vec<String>,
    /// Admin bearer token of the service.
    #[arg(long, env = "FLASHGRAB_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// HS256 secret the service verifies user tokens with.
    #[arg(long, env = "FLASHGRAB_USER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Distinct users; request i is sent as user i mod USERS.
    #[arg(long, short = 'u', default_value_t = 10_000)]
    users: u32,
    /// Coupons in the drop.
    #[arg(long, short = 's', default_value_t = 1_000)]
    stock: u64,
    /// Stock shards of the campaign (default: the service chooses).
    #[arg(long)]
    shards: Option<u32>,
    /// Workers, i.e. requests in flight at most.
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// Requests to send at most (default: one per user).
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Open loop: send this many requests per second in total and measure
    /// latency from each request's scheduled time. Default: closed loop.
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// No new request after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    duration: f64,
    /// Timeout of one request, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    timeout_ms: u64,
    /// Runtime threads of the load generator (it shares the machine with
    /// the server: keep it small).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// User id prefix (users are PREFIX0 .. PREFIX<USERS-1>).
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Allow non-loopback targets.
    #[arg(long)]
    allow_remote: bool,
}

/// Whether every invariant held.
pub enum Verdict {
    Held,
    Broken,
}

pub async fn run(a: DropArgs) -> anyhow::Result<Verdict> {
    if a.users == 0 || a.stock == 0 || a.concurrency == 0 {
        bail!("--users, --stock and --concurrency must be at least 1");
    }
    if !(a.duration > 0.0 && a.duration <= 3600.0) {
        bail!("--duration must be in (0, 3600] seconds");
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number");
    }
    let bases = a.urls.iter().map(|u| client::base_url(u, a.allow_remote)).collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = Duration::from_millis(a.timeout_ms.max(1));
    let http = Http::new(a.concurrency, timeout);

    let spec = CampaignSpec {
        name: format!("loadtest drop {}", chrono::Utc::now().format("%F %T")),
        total_stock: a.stock,
        shards: a.shards,
        open_for: chrono::Duration::seconds(a.duration.ceil() as i64 + 600),
    };
    let campaign = api::create_campaign(&http, &bases[0], &a.admin_token, &spec).await?;
    eprintln!(
        "campaign {campaign}: stock {}, {} users, {} workers on {}",
        a.stock,
        a.users,
        a.concurrency,
        bases.join(" ")
    );

    let minting = Instant::now();
    let user_ids: Vec<String> = (0..a.users).map(|i| tokens::user_id(&a.user_prefix, i)).collect();
    let exp = chrono::Utc::now().timestamp() + a.duration.ceil() as i64 + 3600;
    let auth = tokens::mint(&a.jwt_secret, &user_ids, exp)
        .into_iter()
        .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
        .collect::<Result<Vec<_>, _>>()
        .context("a minted token is not a valid header value")?;
    eprintln!("minted {} tokens in {:.2} s", auth.len(), minting.elapsed().as_secs_f64());
    let claim_uris = bases
        .iter()
        .map(|b| format!("{b}/v1/campaigns/{campaign}/claim").parse::<Uri>())
        .collect::<Result<Vec<_>, _>>()?;

    let plan = Plan {
        requests: a.requests.unwrap_or(u64::from(a.users)),
        concurrency: a.concurrency,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
    };
    let result = engine::run(http.clone(), Target { claim_uris, auth }, plan).await;
    for s in &result.samples {
        eprintln!("sample error: {s}");
    }

    let stats = api::fetch_stats(&http, &bases[0], &a.admin_token, &campaign).await;
    let invariants = match &stats {
        Ok(s) => invariants::verify(&Expect { stock: a.stock, users: a.users, user_ids: &user_ids }, &result, s),
        Err(e) => vec![invariants::Check { name: "stats_readable", ok: false, detail: format!("{e:#}") }],
    };
    let held = invariants.iter().all(|c| c.ok);
    let (outcomes, all) = report::summarise(&result.hists);
    let secs = result.elapsed.as_secs_f64();
    let granted = result.counts[crate::outcome::Outcome::Granted.index()];
    let report = Report {
        scenario: "drop",
        campaign_id: campaign,
        urls: bases,
        users: a.users,
        stock: a.stock,
        concurrency: a.concurrency,
        rate_per_s: a.rate,
        latency_from: if a.rate.is_some() {
            "scheduled send time (open loop)"
        } else {
            "actual send time (closed loop)"
        },
        requests: result.sent(),
        elapsed_s: secs,
        throughput_per_s: result.sent() as f64 / secs,
        granted_per_s: granted as f64 / secs,
        outcomes,
        all,
        stats: stats.ok(),
        invariants,
        held,
    };
    report::print_summary(&report);
    if let Some(path) = &a.json {
        report::write_json(path, &report)?;
        eprintln!("report written to {}", path.display());
    }
    if held {
        Ok(Verdict::Held)
    } else {
        for c in report.invariants.iter().filter(|c| !c.ok) {
            eprintln!("INVARIANT BROKEN: {}: {}", c.name, c.detail);
        }
        Ok(Verdict::Broken)
    }
}
