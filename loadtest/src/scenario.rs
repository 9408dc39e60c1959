//! The three scenarios and the steps they share.
//!
//! - `drop`: a campaign that starts a moment after its creation; the harness
//!   waits for the start, then a burst of virtual users claims (by default
//!   every arrival in the first two seconds, open loop: `burst:N@2s`; or
//!   `--arrivals`, `--rate`, `--closed-loop`), a share of them
//!   double-tapping and a share retrying, until the arrivals are spent: past
//!   the sell-out when there are more users than coupons, and past the first
//!   pass when `--requests` exceeds `--users`.
//! - `steady`: a fixed arrival rate (open loop) for a duration, one new user
//!   per arrival; by default the stock never runs out, so every answer is a
//!   claim that did the full work.
//! - `redeem`: each 201 is followed, a checkout pause later, by
//!   `POST /v1/coupons/{id}/redeem` on the next instance; a share of users
//!   send the redemption twice (same order id, must be idempotent).
//!
//! Shared steps: create the campaign, mint one JWT per user, wait for the
//! start, run the load while polling the stats, wait for `persisted ==
//! claimed`, check the invariants (API, then the database when
//! `--mysql-url` is given), print the summary, write the JSON and HTML
//! reports.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hyper::Uri;
use hyper::header::HeaderValue;

use crate::api::{self, CampaignSpec};
use crate::client::{self, Http};
use crate::engine::{self, Behaviour, Plan, RedeemPlan, Target, flag};
use crate::invariants::{self, Expect, Holding};
use crate::outcome::{Op, Outcome};
use crate::persistence::{self, PollTarget};
use crate::report::{self, Report};
use crate::{db, html, series, slo, tokens};

/// Options every scenario has: where, as whom, how many connections, what
/// to check and where the reports go.
#[derive(Args)]
pub struct Common {
    /// Base URL of a flashgrab instance; repeat for several instances (the
    /// workers are spread over them; the campaign is created on the first).
    #[arg(long = "url", value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub urls: Vec<String>,
    /// Admin bearer token of the service.
    #[arg(long, env = "FLASHGRAB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// HS256 secret the service verifies user tokens with (user JWTs are
    /// minted from it before the load).
    #[arg(long, env = "FLASHGRAB_USER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Workers = connections = requests in flight at most (a double tap
    /// briefly uses two).
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Timeout of one request, milliseconds (an expired request counts as
    /// an ambiguous answer).
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    pub timeout_ms: u64,
    /// Runtime threads of the load generator (it shares the machine with
    /// the server: keep it small).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// User id prefix (users are PREFIX0 .. PREFIX<USERS-1>).
    #[arg(long, default_value = "u")]
    pub user_prefix: String,
    /// Stock shards of the campaign (default: the service chooses).
    #[arg(long)]
    pub shards: Option<u32>,
    /// Poll the stats endpoint this often during the run (stock left,
    /// claimed and persisted of the per-second series; persistence lag).
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    pub stats_every_ms: u64,
    /// After the load, wait up to this long for persisted == claimed.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub persist_timeout: f64,
    /// Do not check persisted == claimed (a service run with --no-persist).
    #[arg(long)]
    pub no_persist_check: bool,
    /// Users whose coupons are listed through GET /v1/me/coupons afterwards
    /// (double-tappers and users with ambiguous answers first).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub check_users: usize,
    /// The service's database: also check the invariants on the rows
    /// (e.g. mysql://root@127.0.0.1:3306/flashgrab).
    #[arg(long, value_name = "URL")]
    pub mysql_url: Option<String>,
    /// Folder of the reports (<scenario>-<campaign>.json, .csv (the
    /// per-second series) and .html).
    #[arg(long, value_name = "DIR", default_value = "target/loadtest")]
    pub out_dir: PathBuf,
    /// Write the JSON report to this file instead (the CSV goes beside it,
    /// same name ending in .csv).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the HTML report to this file instead.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Write no report file (the summary is still printed).
    #[arg(long)]
    pub no_report: bool,
    /// Allow non-loopback targets.
    #[arg(long)]
    pub allow_remote: bool,
    /// Launch gate: thresholds the run must meet, e.g.
    /// 'p99<50ms,errors<0.1%,granted==stock'. Latency: pNN, max,
    /// OUTCOME.pNN (granted.p99, sold_out.p50); share: errors; counts: an
    /// outcome key (granted, rate_limited, ...), requests, arrivals, stock,
    /// claimed, persisted, remaining; per second: throughput, grants_per_s;
    /// seconds: persist_lag, sold_out_at, last_grant_at. Operators < <= > >=
    /// == !=; units us ms s % /s. Exit 3 when a threshold failed (and every
    /// invariant held).
    #[arg(long, value_name = "THRESHOLDS")]
    pub slo: Option<String>,
}

#[derive(Args)]
pub struct DropArgs {
    /// Distinct users; arrival i is user i mod USERS.
    #[arg(long, short = 'u', default_value_t = 10_000)]
    users: u32,
    /// Coupons in the drop.
    #[arg(long, short = 's', default_value_t = 1_000)]
    stock: u64,
    /// Arrivals (user taps) at most (default: one per user). More than
    /// --users sends users again after their first tap.
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Open loop at a fixed rate instead of the default burst: this many
    /// arrivals per second, latency measured from each one's scheduled time.
    #[arg(long, value_name = "PER_SECOND", conflicts_with = "closed_loop")]
    rate: Option<f64>,
    /// With --rate or --closed-loop: no new arrival after this many seconds
    /// (an arrival profile sets its own length).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    duration: f64,
    /// Open loop by an arrival profile: stages separated by commas,
    /// 'burst:N@T' (N arrivals spread over T), 'ramp:A-B@T' (A to B per
    /// second), 'rate:R@T'; k and M suffixes, T in s or ms. E.g.
    /// 'burst:1M@2s' or 'ramp:0-20k@5s,rate:20k@10s'. Sets the arrivals (at
    /// most --requests) and the duration. Default, without --arrivals,
    /// --rate or --closed-loop: the real drop's shape, a burst at the start,
    /// every arrival (--requests, else --users) in the first two seconds
    /// ('burst:N@2s').
    #[arg(long, value_name = "PROFILE", conflicts_with_all = ["rate", "closed_loop"])]
    arrivals: Option<String>,
    /// Closed loop instead of the default burst: each worker sends its next
    /// arrival as soon as its answer came (a capacity measurement, not a
    /// drop's shape), for at most --duration.
    #[arg(long)]
    closed_loop: bool,
    /// Share of users whose first tap sends two claims at once.
    #[arg(long, value_name = "SHARE", default_value_t = 0.05)]
    double_tap: f64,
    /// Share of users who retry after 429, 503, a timeout or an error.
    #[arg(long, value_name = "SHARE", default_value_t = 0.2)]
    retry_share: f64,
    /// Retries per user at most.
    #[arg(long, default_value_t = 3)]
    max_retries: u8,
    /// The campaign starts this many seconds after its creation; the burst
    /// begins at the start.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    start_in: f64,
    /// Run against this existing campaign (staged beforehand, nothing
    /// claimed yet, per_user_limit 1) instead of creating one: its stock and
    /// start are read from GET /v1/campaigns/ID (--stock and --start-in are
    /// ignored); the burst begins at its start.
    #[arg(long, value_name = "ID")]
    campaign: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args)]
pub struct SteadyArgs {
    /// Arrivals per second (open loop; latency from the scheduled time).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 1_000.0)]
    rate: f64,
    /// Length of the run, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Distinct users (default: one per arrival, RATE x DURATION).
    #[arg(long, short = 'u')]
    users: Option<u32>,
    /// Coupons (default: as many as users, so the stock never runs out).
    #[arg(long, short = 's')]
    stock: Option<u64>,
    /// Arrivals at most (default: RATE x DURATION).
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args)]
pub struct RedeemArgs {
    /// Claims per second (open loop); 0 for the closed loop.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 200.0)]
    rate: f64,
    /// No new claim after this many seconds (redemptions due later are
    /// still sent, up to CHECKOUT + 5 s after).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Distinct users (default: one per claim, RATE x DURATION).
    #[arg(long, short = 'u')]
    users: Option<u32>,
    /// Coupons (default: as many as users).
    #[arg(long, short = 's')]
    stock: Option<u64>,
    /// Pause between a 201 and its redemption (the user at checkout), ms.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    checkout_ms: u64,
    /// Share of users who send their redemption twice with the same order.
    #[arg(long, value_name = "SHARE", default_value_t = 0.1)]
    replay_share: f64,
    /// Order total of each redemption, cents (above the coupon's discount).
    #[arg(long, default_value_t = 10_000)]
    order_total_cents: i64,
    /// Share of users who retry after 429, 503, a timeout or an error.
    #[arg(long, value_name = "SHARE", default_value_t = 0.2)]
    retry_share: f64,
    #[command(flatten)]
    pub common: Common,
}

/// Whether every invariant held, and the launch gate passed.
pub enum Verdict {
    Held,
    /// An invariant broke (exit 1).
    Broken,
    /// Every invariant held but a `--slo` threshold failed (exit 3).
    SloFailed,
}

/// What a scenario asks of the shared steps.
struct Setup {
    scenario: &'static str,
    users: u32,
    stock: u64,
    arrivals: u64,
    rate: Option<f64>,
    profile: Option<std::sync::Arc<crate::arrivals::Profile>>,
    /// The profile as given (or the default burst), for the reports.
    profile_spec: Option<String>,
    duration: f64,
    start_in: f64,
    behaviour: Behaviour,
    /// An existing campaign to use instead of creating one.
    campaign: Option<String>,
}

fn share(name: &str, v: f64) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&v) {
        bail!("{name} must be between 0 and 1, got {v}");
    }
    Ok(())
}

/// The default scenario of `drop`: every arrival in the first two seconds.
pub fn default_burst(arrivals: u64) -> String {
    format!("burst:{arrivals}@2s")
}

fn per_arrival(rate: f64, duration: f64) -> anyhow::Result<u32> {
    let n = (rate * duration).ceil();
    if !(1.0..=u32::MAX as f64).contains(&n) {
        bail!("--rate x --duration must be between 1 and {}", u32::MAX);
    }
    Ok(n as u32)
}

pub async fn drop(a: DropArgs) -> anyhow::Result<Verdict> {
    share("--double-tap", a.double_tap)?;
    share("--retry-share", a.retry_share)?;
    let spec = match (&a.arrivals, a.rate, a.closed_loop) {
        (Some(p), _, _) => Some(p.clone()),
        (None, None, false) => Some(default_burst(a.requests.unwrap_or(u64::from(a.users)))),
        _ => None,
    };
    let profile = spec.as_deref().map(crate::arrivals::Profile::parse).transpose()?;
    let (arrivals, rate, duration) = match &profile {
        None => (a.requests.unwrap_or(u64::from(a.users)), a.rate, a.duration),
        Some(p) => {
            let total = p.total() as u64;
            (a.requests.map_or(total, |r| r.min(total)), Some(p.total() / p.secs()), p.secs())
        }
    };
    let setup = Setup {
        scenario: "drop",
        users: a.users,
        stock: a.stock,
        arrivals,
        rate,
        profile: profile.map(std::sync::Arc::new),
        profile_spec: spec,
        duration,
        start_in: a.start_in,
        campaign: a.campaign,
        behaviour: Behaviour {
            double_tap: a.double_tap,
            retry_share: a.retry_share,
            max_retries: a.max_retries,
            redeem: None,
        },
    };
    run(&a.common, setup).await
}

pub async fn steady(a: SteadyArgs) -> anyhow::Result<Verdict> {
    let per = per_arrival(a.rate, a.duration)?;
    let users = a.users.unwrap_or(per);
    let setup = Setup {
        scenario: "steady",
        users,
        stock: a.stock.unwrap_or(u64::from(users)),
        arrivals: a.requests.unwrap_or(u64::from(per)),
        rate: Some(a.rate),
        profile: None,
        profile_spec: None,
        duration: a.duration,
        start_in: 0.0,
        behaviour: Behaviour::default(),
        campaign: None,
    };
    run(&a.common, setup).await
}

pub async fn redeem(a: RedeemArgs) -> anyhow::Result<Verdict> {
    share("--replay-share", a.replay_share)?;
    share("--retry-share", a.retry_share)?;
    if a.order_total_cents < api::DISCOUNT_CENTS {
        bail!("--order-total-cents must be at least the coupon's discount ({})", api::DISCOUNT_CENTS);
    }
    let rate = (a.rate > 0.0).then_some(a.rate);
    let users = match (a.users, rate) {
        (Some(u), _) => u,
        (None, Some(r)) => per_arrival(r, a.duration)?,
        (None, None) => bail!("--users is required in the closed loop (--rate 0)"),
    };
    let setup = Setup {
        scenario: "redeem",
        users,
        stock: a.stock.unwrap_or(u64::from(users)),
        arrivals: u64::from(users),
        rate,
        profile: None,
        profile_spec: None,
        duration: a.duration,
        start_in: 0.0,
        campaign: None,
        behaviour: Behaviour {
            double_tap: 0.0,
            retry_share: a.retry_share,
            max_retries: 3,
            redeem: Some(RedeemPlan {
                checkout: Duration::from_millis(a.checkout_ms),
                replay_share: a.replay_share,
                order_total_cents: a.order_total_cents,
            }),
        },
    };
    run(&a.common, setup).await
}

async fn run(c: &Common, mut s: Setup) -> anyhow::Result<Verdict> {
    // Before any load: a typo in the gate is a usage error.
    let gate = c.slo.as_deref().map(slo::parse).transpose()?;
    if s.users == 0 || s.stock == 0 || c.concurrency == 0 || s.arrivals == 0 {
        bail!("users, stock, requests and --concurrency must be at least 1");
    }
    if !(s.duration > 0.0 && s.duration <= 3600.0) {
        bail!("--duration must be in (0, 3600] seconds");
    }
    if s.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number");
    }
    if !((0.0..=60.0).contains(&s.start_in) && (0.0..=3600.0).contains(&c.persist_timeout)) {
        bail!("--start-in must be in [0, 60] and --persist-timeout in [0, 3600] seconds");
    }
    let bases = c.urls.iter().map(|u| client::base_url(u, c.allow_remote)).collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = Duration::from_millis(c.timeout_ms.max(1));
    let http = Http::new(c.concurrency + 4, timeout);
    let grace = match &s.behaviour.redeem {
        Some(r) => r.checkout + Duration::from_secs(5),
        None if s.behaviour.retry_share > 0.0 => Duration::from_secs(5),
        None => Duration::ZERO,
    };

    let spec = CampaignSpec {
        name: format!("loadtest {} {}", s.scenario, chrono::Utc::now().format("%F %T")),
        total_stock: s.stock,
        shards: c.shards,
        starts_in: chrono::Duration::milliseconds((s.start_in * 1000.0) as i64),
        open_for: chrono::Duration::seconds((s.duration + grace.as_secs_f64()).ceil() as i64 + 600),
    };
    let created = match &s.campaign {
        None => api::create_campaign(&http, &bases[0], &c.admin_token, &spec).await?,
        Some(id) => {
            let staged = staged_campaign(&http, &bases[0], &c.admin_token, id).await?;
            s.stock = staged.total_stock;
            api::Created { id: staged.id, starts_at: staged.starts_at }
        }
    };
    let campaign = created.id;
    eprintln!(
        "{} {campaign}: stock {}, {} users, {} arrivals at most, {} workers on {}",
        s.scenario,
        s.stock,
        s.users,
        s.arrivals,
        c.concurrency,
        bases.join(" ")
    );

    let minting = Instant::now();
    let user_ids: Vec<String> = (0..s.users).map(|i| tokens::user_id(&c.user_prefix, i)).collect();
    let exp = chrono::Utc::now().timestamp() + (s.start_in + s.duration) as i64 + 3600;
    let auth = tokens::mint(&c.jwt_secret, &user_ids, exp)
        .into_iter()
        .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
        .collect::<Result<Vec<_>, _>>()
        .context("a minted token is not a valid header value")?;
    eprintln!("minted {} tokens in {:.2} s", auth.len(), minting.elapsed().as_secs_f64());
    let claim_uris = bases
        .iter()
        .map(|b| format!("{b}/v1/campaigns/{campaign}/claim").parse::<Uri>())
        .collect::<Result<Vec<_>, _>>()?;

    // The burst begins at the campaign's start (plus a little for clocks).
    let wait = (created.starts_at - chrono::Utc::now()).to_std().unwrap_or_default();
    if !wait.is_zero() {
        eprintln!("waiting {:.2} s for the start", wait.as_secs_f64());
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
    }

    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let start = Instant::now();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let poll_target = PollTarget {
        http: http.clone(),
        base: bases[0].clone(),
        admin_token: c.admin_token.clone(),
        campaign: campaign.clone(),
    };
    let persist_timeout = if c.no_persist_check { Duration::ZERO } else { Duration::from_secs_f64(c.persist_timeout) };
    let poller = tokio::spawn(persistence::poll(
        poll_target,
        start,
        Duration::from_millis(c.stats_every_ms.max(50)),
        persist_timeout,
        done_rx,
    ));
    let plan = Plan {
        arrivals: s.arrivals,
        concurrency: c.concurrency,
        rate: s.rate,
        profile: s.profile.clone(),
        duration: Duration::from_secs_f64(s.duration),
        grace,
    };
    let target = Target { bases: bases.clone(), claim_uris, auth };
    let result = engine::run(http.clone(), target, plan, s.behaviour.clone(), s.users).await;
    let _ = done_tx.send(true);
    for sample in &result.samples {
        eprintln!("sample error: {sample}");
    }
    if !c.no_persist_check {
        eprintln!("waiting up to {:.0} s for persisted == claimed", c.persist_timeout);
    }
    let polled = poller.await.context("the stats poller failed")?;
    if let Some(e) = &polled.last_error {
        eprintln!("a stats poll failed (skipped): {e}");
    }

    let expect = Expect { stock: s.stock, user_ids: &user_ids, discount_cents: api::DISCOUNT_CENTS };
    let stats = api::fetch_stats(&http, &bases[0], &c.admin_token, &campaign).await;
    let mut checks = Vec::new();
    match &stats {
        Ok(st) => {
            checks.extend(invariants::verify(&expect, &result, st));
            if !c.no_persist_check {
                checks.push(invariants::persistence(st, polled.converged_after_s, c.persist_timeout));
            }
            if s.behaviour.redeem.is_some() {
                checks.extend(invariants::redemptions(&expect, &result, st));
            }
        }
        Err(e) => checks.push(invariants::Check { name: "stats_readable", ok: false, detail: format!("{e:#}") }),
    }
    if c.check_users > 0 {
        let mut sample = Vec::new();
        for user in pick_users(&result.users, c.check_users) {
            let auth = HeaderValue::from_str(&format!(
                "Bearer {}",
                tokens::mint(&c.jwt_secret, std::slice::from_ref(&user_ids[user as usize]), exp)[0]
            ))?;
            let listed =
                api::my_coupons(&http, &bases[bases.len() - 1], &auth, &campaign).await.map_err(|e| format!("{e:#}"));
            sample.push(Holding { user, listed });
        }
        checks.push(invariants::holdings(&expect, &result, &sample));
    }
    if let (Some(url), Ok(st)) = (&c.mysql_url, &stats) {
        match db::facts(url, &campaign).await {
            Ok(f) => checks.extend(invariants::database(&result, st, &f, s.behaviour.redeem.is_some())),
            Err(e) => checks.push(invariants::Check { name: "db_readable", ok: false, detail: format!("{e:#}") }),
        }
    }

    let held = checks.iter().all(|c| c.ok);
    let (outcomes, all) = report::summarise(&result.hists);
    let report_urls = bases.clone();
    let secs = result.elapsed.as_secs_f64();
    let granted = result.count(Op::Claim, Outcome::Granted);
    let report = Report {
        scenario: s.scenario,
        started_at,
        campaign_id: campaign.clone(),
        urls: bases,
        users: s.users,
        stock: s.stock,
        concurrency: c.concurrency,
        rate_per_s: s.rate,
        arrivals_profile: s.profile_spec.clone(),
        latency_from: if s.rate.is_some() {
            "scheduled send time if the worker was busy then, else the send (open loop)"
        } else {
            "actual send time (closed loop)"
        },
        arrivals: result.arrivals,
        requests: result.sent(),
        elapsed_s: secs,
        throughput_per_s: result.sent() as f64 / secs,
        granted_per_s: granted as f64 / secs,
        last_grant_s: result.last_grant.map(|d| d.as_secs_f64()),
        first_sold_out_s: result.first_sold_out.map(|d| d.as_secs_f64()),
        abandoned: result.abandoned,
        outcomes,
        all,
        seconds: series::rows(&result.seconds, &polled.samples),
        persistence: polled.samples,
        persisted_after_s: polled.converged_after_s,
        stats: stats.ok(),
        invariants: checks,
        held,
        targets: report::target_summaries(&report_urls, &result.per_target),
        slo: Vec::new(),
        warnings: Vec::new(),
    };
    let mut report = report;
    report.warnings = report::warnings(&report.outcomes);
    if let Some(gate) = &gate {
        report.slo = slo::evaluate(gate, &report::Measured::new(&result, &report));
    }
    report::print_summary(&report);
    if !c.no_report {
        let name = format!("{}-{campaign}", s.scenario);
        let json = c.json.clone().unwrap_or_else(|| c.out_dir.join(format!("{name}.json")));
        let html_path = c.html.clone().unwrap_or_else(|| c.out_dir.join(format!("{name}.html")));
        for p in [&json, &html_path] {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let csv = json.with_extension("csv");
        report::write_json(&json, &report)?;
        std::fs::write(&csv, series::csv(&report.seconds)).with_context(|| format!("writing {}", csv.display()))?;
        std::fs::write(&html_path, html::render(&report))
            .with_context(|| format!("writing {}", html_path.display()))?;
        eprintln!("reports: {} {} {}", json.display(), csv.display(), html_path.display());
    }
    for w in &report.warnings {
        eprintln!("WARNING: {w}");
    }
    if !held {
        for c in report.invariants.iter().filter(|c| !c.ok) {
            eprintln!("INVARIANT BROKEN: {}: {}", c.name, c.detail);
        }
        return Ok(Verdict::Broken);
    }
    let failed: Vec<_> = report.slo.iter().filter(|v| !v.ok).collect();
    if failed.is_empty() {
        return Ok(Verdict::Held);
    }
    for v in failed {
        eprintln!("SLO FAILED: {}: {}", v.threshold, v.detail);
    }
    Ok(Verdict::SloFailed)
}

/// The terms of a staged campaign, refused when the run's invariants could
/// not hold on it: claims already made (they would count as this run's),
/// a per-user limit above 1 (the checks assume one coupon per user), or
/// over already.
async fn staged_campaign(http: &Http, base: &str, admin_token: &str, id: &str) -> anyhow::Result<api::Staged> {
    let staged = api::get_campaign(http, base, admin_token, id).await?;
    let stats = api::fetch_stats(http, base, admin_token, id).await?;
    if stats.claimed > 0 {
        bail!(
            "--campaign {id} already has {} claims; stage a fresh one (the invariants count every claim as this run's)",
            stats.claimed
        );
    }
    if staged.per_user_limit != 1 {
        bail!(
            "--campaign {id} has per_user_limit {}; the harness checks campaigns of one coupon per user",
            staged.per_user_limit
        );
    }
    if staged.ends_at <= chrono::Utc::now() || matches!(staged.status.as_str(), "ended" | "sold_out") {
        bail!("--campaign {id} is over (status {}, ends_at {})", staged.status, staged.ends_at);
    }
    Ok(staged)
}

/// Up to `n` users to list through the API: those whose fate is the most
/// interesting first (double-tappers, ambiguous answers, 409s), then
/// holders, then the rest reached.
pub fn pick_users(flags: &[u8], n: usize) -> Vec<u32> {
    let rank = |f: u8| {
        if f & flag::REACHED == 0 {
            None
        } else if f & (flag::DOUBLE_TAPPED | flag::AMBIGUOUS | flag::HELD) != 0 {
            Some(0)
        } else if f & flag::GRANTED != 0 {
            Some(1)
        } else {
            Some(2)
        }
    };
    let mut picked = Vec::with_capacity(n);
    for r in 0..3 {
        for (u, f) in flags.iter().enumerate() {
            if picked.len() >= n {
                return picked;
            }
            if rank(*f) == Some(r) {
                picked.push(u as u32);
            }
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_interesting_users_first() {
        let r = flag::REACHED;
        let flags = [r, 0, r | flag::GRANTED, r | flag::GRANTED | flag::DOUBLE_TAPPED, r | flag::AMBIGUOUS];
        assert_eq!(pick_users(&flags, 3), vec![3, 4, 2]);
        assert_eq!(pick_users(&flags, 10), vec![3, 4, 2, 0]);
    }

    #[test]
    fn arrivals_from_rate_and_duration() {
        assert_eq!(per_arrival(100.0, 2.5).unwrap(), 250);
        assert!(per_arrival(0.0, 1.0).is_err());
        assert!(share("--x", 1.5).is_err() && share("--x", 0.0).is_ok());
        let burst = crate::arrivals::Profile::parse(&default_burst(4000)).unwrap();
        assert_eq!((burst.total(), burst.secs()), (4000.0, 2.0));
    }
}
