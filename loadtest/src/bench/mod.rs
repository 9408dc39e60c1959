//! `flashgrab-loadtest bench`: the benchmark driver. Measures, in one run,
//! on this machine, against the local Redis Cluster, the claim path of a
//! release flashgrab and its baselines (R, H, C, F, E, D; see the `--help`
//! text in [`BenchArgs`]), takes the median of each figure's runs, derives
//! L and the ratios, prints a table and writes `result.json`.
//!
//! Why in Rust: the bash script it replaces (978 lines, medians and ratios
//! in awk) could not be tested; here the arithmetic (`figures`), the
//! parsing of wrk/redis output (`wrk`, `cluster`), the result and its
//! renderings (`result`, `markdown`) are pure and unit-tested, and only
//! this module starts processes.
//!
//! Data flow: preflight -> R (redis-benchmark on every master) -> the
//! instance -> H -> C, F, E, D with wrk and the harness (or, `--harness`,
//! A1, A2, O, X in `harness`) -> medians and ratios -> result.json and the
//! table. What it started and made is undone on every exit ([`Bench`]'s
//! `Drop`): instances stopped, Redis keys unlinked, database dropped, queue
//! purged.

mod cluster;
pub mod figures;
mod harness;
pub mod markdown;
mod procs;
pub mod result;
mod wrk;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::Request;

use self::figures::{Ratios, Sample, Series};
use self::procs::{Started, Watch};
use self::result::{BenchResult, ClaimRun, Closed, CpuSplit, Figures, OpenLoop, SCHEMA, Settings};
use crate::api::{self, CampaignSpec};
use crate::client::Http;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const JWT_SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const KEY_PREFIX: &str = "bench";
const BENCH_DB: &str = "flashgrab_bench";
/// wrk connections of E (a light load).
const E_CONNS: u32 = 8;
/// Stock of the campaigns that must not run out during a run.
const HUGE_STOCK: u64 = 1_000_000_000;

/// The long `--help` of `bench` (what it measures and how).
pub const LONG_ABOUT: &str = r#"Measures, in one run, on this machine, against the local Redis Cluster
(scripts/stack up) and a release build of flashgrab:

  R  claim script alone: redis-benchmark EVALSHA of lua/claim.lua with one
     claim per call, one redis-benchmark per master in parallel (50
     clients each), rates summed; pipelined (-P 16) and not (-P 1). Every
     call is a real grant. (The service may send several claims of a shard
     in one call: FLASHGRAB_CLAIM_BATCH, default 32; FLASHGRAB_CLAIM_BATCH=1
     measures C without.)
  H  bare endpoint: GET /healthz of 'flashgrab serve', wrk -t1 -c64 (-c:
     --connections).
  C  claims/s of that instance: wrk -t1 -c64 (same --connections) POSTing
     /v1/campaigns/{id}/claim, a different pre-minted user JWT per request
     (requests built before the run, no per-response script), on a fresh
     campaign with more stock than requests; only 201s count (the
     campaign's claimed units after the run / wrk's time). CPU used by
     wrk, flashgrab, redis-server, mariadbd and RabbitMQ during those runs
     is reported too.
  F  the floor: flashgrab-floor, a naive server of the same shape (axum,
     one cluster-async EVALSHA of lua/claim.lua per request, no JWT check,
     limits, metrics or batching), same wrk script, same cluster. Every C
     and F run starts from the same Redis state (its keys are unlinked
     after it).
  E  latency at a light load, closed loop: wrk -c8 against flashgrab and
     against the floor (requests/s, p50, p99 of each).
  D  claim latency at C/2: 'flashgrab-loadtest drop' in open loop at C/2
     requests/s (latency from each request's scheduled send time, or from
     its send when its worker was free then).

Then L = 1/(1/H + 1/R) (what a server doing nothing but the bare
endpoint and the script could reach), C/L, F/L and C/F. Each figure is
the median of --runs runs.

A compile next to a measurement on 2 cores disturbs it: before each run
the driver waits until no rustc/cargo runs (polling every 10 s, up to
--quiet-wait), watches for them during the run, and runs again (up to
--retries times) when one appeared; a run kept anyway is marked '*'. A
compile paused with SIGSTOP (state T) does not count: `pkill -STOP -x
rustc` (and cargo, cc, ld) holds other builds for the length of a
measurement, `pkill -CONT` resumes them.

Writes <out>/result.json (commit, machine, command, every run's figures,
medians, ratios; `bench-markdown` renders it) beside the raw outputs of
wrk, redis-benchmark and the harness. Leaves nothing behind: the
instances it started are stopped, the Redis keys it created (tags
'{bench:...}', '{benchr<pid>:...}', '{benchf<pid>:...}') unlinked, the
MySQL database flashgrab_bench dropped and the RabbitMQ queue
bench.claims purged (as root). Needs wrk, redis-benchmark and the
release binaries flashgrab and flashgrab-floor beside this one
(scripts/bench builds them and installs wrk when missing)."#;

/// Options of `bench` (see [`LONG_ABOUT`]).
#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Runs per figure [default: 3; --quick: 1].
    #[arg(long = "runs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    runs_given: Option<u32>,
    #[arg(skip)]
    runs: u32,
    /// Length of each wrk / harness run in seconds [default: 10; --quick: 3].
    #[arg(long = "secs", value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    secs_given: Option<u32>,
    #[arg(skip)]
    secs: u32,
    /// Calls per master per redis-benchmark run, pipelined (unpipelined
    /// uses N/4) [default: 200000; --quick: 60000].
    #[arg(long = "redis-n", value_name = "N", value_parser = clap::value_parser!(u32).range(4..))]
    redis_n_given: Option<u32>,
    #[arg(skip)]
    redis_n: u32,
    /// Port of the flashgrab instance (the floor uses PORT+5, --harness's
    /// second instance PORT+1).
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// wrk connections of the H, C and F runs. The instance runs with its
    /// per-address and per-instance claim limits off (FLASHGRAB_IP_RATE /
    /// _CLAIM_RATE = 0 unless set): this measures capacity, not the limits.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// User JWTs pre-minted for the wrk claim runs [default: 600000;
    /// --quick: 200000].
    #[arg(long = "tokens", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    tokens_given: Option<u32>,
    #[arg(skip)]
    tokens: u32,
    /// Extra tries of a run disturbed by a compile.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Seconds to wait for other compiles to end before each run.
    #[arg(long, env = "FG_BENCH_QUIET_WAIT", default_value_t = 600)]
    quiet_wait: u64,
    /// Results folder (default <target>/bench/<UTC time>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Accepted for scripts/bench's sake: this driver never builds (scripts/bench
    /// runs 'cargo build --release' first unless given --no-build).
    #[arg(long)]
    no_build: bool,
    /// 1 run of 3 s each, smaller N (to try the driver; not figures); an
    /// explicit --runs, --secs, --redis-n or --tokens still wins.
    #[arg(long)]
    quick: bool,
    /// Measure with flashgrab-loadtest instead of wrk: R and H as above, then
    /// C..D replaced by A1 (claims/s of one instance, closed loop -c64), A2
    /// (two instances), O50/O80 (open-loop latency at 50 % and 80 % of A1,
    /// -c128) and X (a closed-loop drop of --drop-users on --drop-stock
    /// coupons with the instance's peak RSS).
    #[arg(long)]
    harness: bool,
    /// Users of --harness's drop X.
    #[arg(long, env = "FG_BENCH_DROP_USERS", default_value_t = 1_000_000)]
    drop_users: u32,
    /// Coupons of --harness's drop X.
    #[arg(long, env = "FG_BENCH_DROP_STOCK", default_value_t = 100_000)]
    drop_stock: u64,
    /// Run the instance as 'serve --no-relay --no-persist': the claim path
    /// alone, as when the outbox relay and the persist worker run on other
    /// machines (the outbox keeps the records; nothing is persisted).
    #[arg(long)]
    claim_only: bool,
    /// What the run is for, written into the result (e.g. "smoke run: not
    /// figures"); bench-markdown shows it first.
    #[arg(long)]
    label: Option<String>,
    /// Folder of the release binaries flashgrab and flashgrab-floor
    /// (default: this binary's own folder).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// The repository (lua/claim.lua, the commit); default $FG_ROOT, else
    /// the nearest folder above the current one holding lua/claim.lua.
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
}

fn log(msg: &str) {
    eprintln!("[bench] {msg}");
}

fn warn(msg: &str) {
    eprintln!("[bench] warning: {msg}");
}

/// One run of the driver: its settings, what it started, what it measured.
struct Bench {
    a: BenchArgs,
    repo: PathBuf,
    out: PathBuf,
    flashgrab: PathBuf,
    floor: PathBuf,
    loadtest: PathBuf,
    base: String,
    floor_url: String,
    /// Hash tags of R's and the floor's keys (own per process).
    rtag: String,
    ftag: String,
    serve_args: Vec<&'static str>,
    rt: tokio::runtime::Runtime,
    http: Http,
    /// The instance under test, and any other process started.
    serve: Option<Started>,
    extra: Vec<Started>,
    interrupted: Arc<AtomicBool>,
    disturbed: Vec<String>,
    tokens_file: PathBuf,
    claim_lua: PathBuf,
}

/// Figures one closure measured, and whether a compile ran meanwhile.
type Watched<T> = (T, bool);

impl Bench {
    fn check_interrupted(&self) -> anyhow::Result<()> {
        if self.interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Runs `f` after waiting for quiet, again when a compile disturbed it
    /// (up to --retries times); the figures and whether the kept run was
    /// disturbed (then also listed in the result).
    fn measured<T>(
        &mut self,
        label: &str,
        mut f: impl FnMut(&mut Self) -> anyhow::Result<Watched<T>>,
    ) -> anyhow::Result<Watched<T>> {
        let mut attempt = 0;
        loop {
            self.check_interrupted()?;
            procs::wait_quiet(self.a.quiet_wait, log);
            let (v, disturbed) = f(self)?;
            self.check_interrupted()?;
            if !disturbed {
                return Ok((v, false));
            }
            if attempt < self.a.retries {
                warn(&format!("{label}: a compile ran during the measurement: measuring again"));
                attempt += 1;
            } else {
                warn(&format!("{label}: a compile ran during the measurement again: keeping it, marked '*'"));
                self.disturbed.push(label.to_owned());
                return Ok((v, true));
            }
        }
    }

    fn get_status(&self, url: &str) -> Option<u16> {
        let http = Http::new(1, Duration::from_secs(1));
        let req = Request::get(url).body(Full::new(Bytes::new())).ok()?;
        self.rt.block_on(http.send(req)).ok().map(|(s, _)| s.as_u16())
    }

    fn create_campaign(&self) -> anyhow::Result<String> {
        let spec = CampaignSpec {
            name: "bench".into(),
            total_stock: HUGE_STOCK,
            shards: None,
            starts_in: chrono::Duration::zero(),
            open_for: chrono::Duration::hours(1),
        };
        Ok(self.rt.block_on(api::create_campaign(&self.http, &self.base, ADMIN_TOKEN, &spec))?.id)
    }

    fn stats(&self, campaign: &str) -> anyhow::Result<api::Stats> {
        self.rt.block_on(api::fetch_stats(&self.http, &self.base, ADMIN_TOKEN, campaign))
    }

    fn mysql_url(&self) -> String {
        format!("mysql://root@127.0.0.1:3306/{BENCH_DB}")
    }

    /// A release `flashgrab serve` with the bench settings on `port`.
    /// `claim_rate_off`: also FLASHGRAB_CLAIM_RATE=0 unless set (the wrk
    /// instance; the harness's instances keep the per-instance limit).
    fn start_instance(&self, port: u16, log_file: &Path, claim_rate_off: bool) -> anyhow::Result<Started> {
        let mut cmd = Command::new(&self.flashgrab);
        cmd.arg("serve")
            .args(&self.serve_args)
            .env("FLASHGRAB_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("FLASHGRAB_USER_JWT_SECRET", JWT_SECRET)
            .env("FLASHGRAB_KEY_PREFIX", KEY_PREFIX)
            .env("FLASHGRAB_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLASHGRAB_MYSQL_URL", self.mysql_url());
        let mut limits = vec!["FLASHGRAB_IP_RATE"];
        if claim_rate_off {
            limits.push("FLASHGRAB_CLAIM_RATE");
        }
        for v in limits {
            if std::env::var_os(v).is_none() {
                cmd.env(v, "0");
            }
        }
        let mut s = Started::spawn("flashgrab serve", cmd, log_file)?;
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..150 {
            if self.get_status(&format!("{base}/readyz")) == Some(200) {
                return Ok(s);
            }
            if !s.alive() {
                break;
            }
            self.check_interrupted()?;
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("flashgrab on port {port} is not ready: {}", tail(log_file, 20))
    }

    fn start_floor(&mut self, log_file: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.floor);
        cmd.arg("--listen")
            .arg(self.floor_url.trim_start_matches("http://"))
            .arg("--redis")
            .arg(format!("redis://{}:{}", cluster::HOST, cluster::SEED_PORT))
            .arg("--prefix")
            .arg(&self.ftag);
        let mut s = Started::spawn("flashgrab-floor", cmd, log_file)?;
        for _ in 0..50 {
            if self.get_status(&format!("{}/healthz", self.floor_url)).is_some() {
                self.extra.push(s);
                return Ok(());
            }
            if !s.alive() {
                bail!("flashgrab-floor exited: {}", tail(log_file, 20));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("flashgrab-floor did not answer on {}: {}", self.floor_url, tail(log_file, 20))
    }

    fn stop_floor(&mut self) {
        self.extra.retain(|s| s.name != "flashgrab-floor");
    }

    fn serve_pid(&self) -> u32 {
        self.serve.as_ref().map_or(0, Started::pid)
    }

    // ---------------------------------------------------------------- R

    /// The current masters (a fault test elsewhere may have failed one
    /// over), a hash tag per master so the 5 keys of its set live there, the
    /// script loaded on each (SCRIPT FLUSH or a restart elsewhere empties the
    /// cache), and a fresh shard hash with a huge stock per master.
    fn r_prepare(&self) -> anyhow::Result<(String, Vec<(u16, String)>)> {
        let script = std::fs::read_to_string(self.repo.join("lua/claim.lua")).context("reading lua/claim.lua")?;
        let mut sha = String::new();
        let mut tags = Vec::new();
        for m in cluster::masters()? {
            let mut con = cluster::connect(m.port)?;
            let s: String = redis::cmd("SCRIPT").arg("LOAD").arg(&script).query(&mut con)?;
            if !sha.is_empty() && sha != s {
                bail!("SCRIPT LOAD gave different SHAs ({sha}, {s})");
            }
            sha = s;
            let tag =
                cluster::tag_on(&m, &self.rtag).with_context(|| format!("found no hash tag for master {}", m.port))?;
            let t = format!("{{{tag}}}");
            let keys = r_keys(&t);
            redis::cmd("UNLINK").arg(&keys).exec(&mut con)?;
            redis::cmd("HSET")
                .arg(&keys[0])
                .arg(&[
                    ("remaining", "100000000000"),
                    ("claimed", "0"),
                    ("starts_ms", "0"),
                    ("ends_ms", "4102444800000"),
                    ("closed", "0"),
                    ("limit", "1"),
                    ("vfrom_ms", "0"),
                    ("vuntil_ms", "0"),
                    ("vdays", "7"),
                ])
                .exec(&mut con)?;
            tags.push((m.port, t));
        }
        Ok((sha, tags))
    }

    /// One redis-benchmark per master in parallel; the summed rate. Users
    /// and coupon ids are random numbers below 1e9: about N^2/2e9 calls per
    /// master meet a user that already holds a coupon (~20 of 200k) and
    /// answer "holding" instead of granting.
    fn r_run(&mut self, pipeline: u32, n: u32) -> anyhow::Result<Watched<f64>> {
        let (sha, tags) = self.r_prepare()?;
        let e0 = cluster::evalsha_stats()?;
        let w = Watch::start();
        let mut children = Vec::new();
        for (port, t) in &tags {
            let csv = self.out.join(format!("redis-benchmark.{port}.csv"));
            let file = std::fs::File::create(&csv)?;
            let child = Command::new("redis-benchmark")
                .args(["-h", cluster::HOST, "-p", &port.to_string(), "-n", &n.to_string(), "-c", "50"])
                .args(["-P", &pipeline.to_string(), "-r", "1000000000", "--csv", "EVALSHA", &sha, "5"])
                .args(r_keys(t))
                .args(["camp", "0", "u__rand_int__", "c__rand_int__", ""])
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()
                .context("starting redis-benchmark (apt-get install -y redis-tools)")?;
            children.push((*port, csv, child));
        }
        let mut failed = None;
        for (_, csv, child) in &mut children {
            if !child.wait()?.success() {
                failed = Some(std::fs::read_to_string(csv).unwrap_or_default());
            }
        }
        let disturbed = w.stop();
        if let Some(out) = failed {
            bail!("redis-benchmark failed: {out}");
        }
        let e1 = cluster::evalsha_stats()?;
        let (mut sum, mut granted) = (0.0, 0u64);
        for ((port, csv, _), (_, t)) in children.iter().zip(&tags) {
            let text = std::fs::read_to_string(csv)?;
            let rate = parse_benchmark_csv(&text)
                .with_context(|| format!("could not read the rate of redis-benchmark on {port}: {text}"))?;
            sum += rate;
            let h: u64 = redis::cmd("HLEN").arg(format!("{t}:c:camp:0:cp")).query(&mut cluster::connect(*port)?)?;
            granted += h;
        }
        let (calls, us) = cluster::per_call(e0, e1);
        let ports: Vec<String> = tags.iter().map(|(p, _)| p.to_string()).collect();
        log(&format!(
            "    -P {pipeline}: {sum:.0} calls/s on masters {} ({granted} of {} calls granted; {calls} EVALSHA, {us:.1} us each inside Redis)",
            ports.join(" "),
            u64::from(n) * tags.len() as u64
        ));
        Ok((sum.round(), disturbed))
    }

    // ---------------------------------------------------------------- H

    fn h_run(&mut self, i: u32) -> anyhow::Result<Watched<f64>> {
        let out = self.out.join(format!("wrk-healthz.{i}.txt"));
        let w = Watch::start();
        let text = wrk::run(self.a.connections, self.a.secs, None, &format!("{}/healthz", self.base), &[], &out)?;
        let disturbed = w.stop();
        let (rate, non2xx) = wrk::parse_plain(&text)?;
        log(&format!(
            "    {rate:.0} req/s{}",
            if non2xx > 0 { format!(" ({non2xx} non-2xx!)") } else { String::new() }
        ));
        Ok((rate.round(), disturbed))
    }

    // ---------------------------------------------------------------- C

    fn unlink_campaign(&self, campaign: &str) -> anyhow::Result<()> {
        let n = cluster::unlink_pattern(&format!("{{{KEY_PREFIX}:*}}:c:{campaign}:*"))?;
        log(&format!("    unlinked {n} keys of campaign {campaign}"));
        // Without the relay the outbox streams only grow, so they go too.
        if self.a.claim_only {
            let n = cluster::unlink_pattern(&format!("{{{KEY_PREFIX}:*}}:outbox"))?;
            log(&format!("    unlinked {n} outbox streams (no relay runs)"));
        }
        Ok(())
    }

    fn c_run(&mut self, i: u32, pids: &Pids) -> anyhow::Result<Watched<(f64, ClaimRun)>> {
        let camp = self.create_campaign()?;
        log(&format!("    campaign {camp}"));
        let e0 = cluster::evalsha_stats()?;
        let serve = [self.serve_pid()];
        let before = pids.ticks(&serve);
        let wrk0 = procs::children_ticks();
        let t0 = Instant::now();
        let w = Watch::start();
        let out = self.out.join(format!("wrk-claim.{i}.txt"));
        let tokens = self.tokens_file.to_string_lossy().into_owned();
        let text = wrk::run(
            self.a.connections,
            self.a.secs,
            Some(&self.claim_lua),
            &self.base,
            &[("FG_CAMPAIGN", &camp), ("FG_TOKENS", &tokens)],
            &out,
        )?;
        let disturbed = w.stop();
        let wall = t0.elapsed().as_secs_f64();
        let wrk_ticks = procs::children_ticks().saturating_sub(wrk0);
        let after = pids.ticks(&serve);
        let e1 = cluster::evalsha_stats()?;
        let summary = wrk::parse_summary(&text)?;
        let granted = self.stats(&camp)?.claimed;
        let c = (granted as f64 / summary.secs).round();
        // Before its run, wrk spends a few seconds reading the tokens and
        // building the requests while the others idle: their CPU is divided
        // by the run's length (wrk's "secs"), wrk's by the whole wall time.
        let hz = pids.hz;
        let per_run = |k: usize| (after[k].saturating_sub(before[k])) as f64 / hz / summary.secs;
        let cpu = CpuSplit {
            wrk: wrk_ticks as f64 / hz / wall,
            wall_s: wall,
            run_s: summary.secs,
            flashgrab: per_run(0),
            redis_masters: per_run(1),
            redis_replicas: per_run(2),
            mariadbd: per_run(3),
            rabbitmq: per_run(4),
        };
        let (calls, us) = cluster::per_call(e0, e1);
        log(&format!("    201={granted} granted_per_s={c:.0} {}", summary.line()));
        log(&format!(
            "    cores used: wrk {:.2} (over {:.1} s wall), over the {:.1} s run: flashgrab {:.2}, redis masters {:.2}, \
             redis replicas {:.2}, mariadbd {:.2}, rabbitmq {:.2}; sum {:.2}",
            cpu.wrk,
            cpu.wall_s,
            cpu.run_s,
            cpu.flashgrab,
            cpu.redis_masters,
            cpu.redis_replicas,
            cpu.mariadbd,
            cpu.rabbitmq,
            cpu.sum()
        ));
        log(&format!("    {calls} EVALSHA, {us:.1} us each inside Redis (claim script, plus the relay's ack script)"));
        if summary.wrapped > 0 {
            warn(&format!(
                "wrk used more requests than --tokens {}: later ones answered 409 (raise --tokens)",
                self.a.tokens
            ));
        }
        // Let the persist worker drain before the next measurement (it
        // competes for the same 2 cores). With --claim-only nothing persists.
        if !self.a.claim_only {
            let t0 = Instant::now();
            let mut st = self.stats(&camp)?;
            for _ in 0..120 {
                if st.claimed == st.persisted {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
                st = self.stats(&camp)?;
            }
            log(&format!(
                "    persisted {} of {} claims, {:.1} s after the run",
                st.persisted,
                st.claimed,
                t0.elapsed().as_secs_f64()
            ));
        }
        // Every run starts from the same state: this run's records leave
        // Redis (a run adds ~200,000; on 2 cores the AOF rewrites of a
        // growing data set took 8-15 % off each following run).
        self.unlink_campaign(&camp)?;
        let run = ClaimRun { granted, wrk: summary, cpu, evalsha_calls: calls, evalsha_us_each: us };
        Ok(((c, run), disturbed))
    }

    // ---------------------------------------------------------------- F

    /// flashgrab-floor from a fresh start, the same wrk script, from the
    /// same clean state.
    fn f_run(&mut self, i: u32) -> anyhow::Result<Watched<f64>> {
        self.start_floor(&self.out.join(format!("floor.{i}.log")))?;
        let w = Watch::start();
        let tokens = self.tokens_file.to_string_lossy().into_owned();
        let text = wrk::run(
            self.a.connections,
            self.a.secs,
            Some(&self.claim_lua),
            &self.floor_url,
            &[("FG_CAMPAIGN", "floor"), ("FG_TOKENS", &tokens)],
            &self.out.join(format!("wrk-floor.{i}.txt")),
        );
        let disturbed = w.stop();
        self.stop_floor();
        let summary = wrk::parse_summary(&text?)?;
        // Every 2xx of the floor is a 201 (a repeat user would get 409).
        let f = summary.ok_rate().round();
        log(&format!("    {} -> {f:.0} claims/s", summary.line()));
        let n = cluster::unlink_pattern(&format!("{{{}:*", self.ftag))?;
        log(&format!("    unlinked {n} keys of the floor"));
        Ok((f, disturbed))
    }

    // ---------------------------------------------------------------- E

    /// wrk -c8 against flashgrab (a fresh campaign) or the floor, from the
    /// same clean state: "rate p50 p99" (all answers).
    fn e_run(&mut self, floor: bool, i: u32) -> anyhow::Result<Watched<[f64; 3]>> {
        let (camp, url) = if floor {
            self.start_floor(&self.out.join(format!("floor-e.{i}.log")))?;
            ("floor".to_owned(), self.floor_url.clone())
        } else {
            (self.create_campaign()?, self.base.clone())
        };
        let kind = if floor { "F" } else { "C" };
        let w = Watch::start();
        let tokens = self.tokens_file.to_string_lossy().into_owned();
        let text = wrk::run(
            E_CONNS,
            self.a.secs,
            Some(&self.claim_lua),
            &url,
            &[("FG_CAMPAIGN", &camp), ("FG_TOKENS", &tokens)],
            &self.out.join(format!("wrk-e{kind}.{i}.txt")),
        );
        let disturbed = w.stop();
        if floor {
            self.stop_floor();
            cluster::unlink_pattern(&format!("{{{}:*", self.ftag))?;
        } else {
            self.unlink_campaign(&camp)?;
        }
        let s = wrk::parse_summary(&text?)?;
        log(&format!("    {}", s.line()));
        Ok(([s.rate().round(), s.p50_ms, s.p99_ms], disturbed))
    }

    // ---------------------------------------------------------------- D

    fn d_run(&mut self, i: u32, rate: u64, users: u64) -> anyhow::Result<Watched<[f64; 6]>> {
        let json = self.out.join(format!("drop.{i}.json"));
        let mut cmd = Command::new(&self.loadtest);
        cmd.args(["drop", "--url", &self.base, "--admin-token", ADMIN_TOKEN, "--jwt-secret", JWT_SECRET])
            .args(["--users", &users.to_string(), "--stock", &HUGE_STOCK.to_string(), "--concurrency", "64"])
            .args(["--rate", &rate.to_string(), "--duration", &self.a.secs.to_string()])
            .args(["--double-tap", "0", "--retry-share", "0", "--start-in", "0"]);
        if self.a.claim_only {
            cmd.arg("--no-persist-check");
        }
        cmd.arg("--json").arg(&json);
        let w = Watch::start();
        let rc = harness::run_logged(cmd, &self.out, &format!("drop.{i}"))?;
        let disturbed = w.stop();
        if rc != 0 {
            warn(&format!("loadtest run {i} exited {rc}: see {}", self.out.join(format!("drop.{i}.err")).display()));
        }
        let r = harness::read_report(&json)?;
        log(&format!(
            "    achieved {:.0} req/s; granted p50 {} p90 {} p99 {} p99.9 {} max {} ms",
            r.req_s, r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms
        ));
        Ok(([r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms, r.req_s.round()], disturbed))
    }

    /// `runs` measurements of `label` (`NAME (how)`), each with its run
    /// number; a disturbed run is named `NAME run I`.
    fn series<T>(
        &mut self,
        label: &str,
        mut f: impl FnMut(&mut Self, u32) -> anyhow::Result<Watched<T>>,
    ) -> anyhow::Result<Vec<Watched<T>>> {
        let runs = self.a.runs;
        let mut out = Vec::new();
        for i in 1..=runs {
            log(&format!("{label} run {i}/{runs}"));
            let name = label.split(" (").next().unwrap_or(label);
            out.push(self.measured(&format!("{name} run {i}"), |b| f(b, i))?);
        }
        Ok(out)
    }

    fn run(&mut self) -> anyhow::Result<BenchResult> {
        let started = Instant::now();
        let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let machine = procs::machine();
        let (commit, dirty) = git_commit(&self.repo);
        let a = self.a.clone();
        let settings = Settings {
            runs: a.runs,
            secs: a.secs,
            connections: a.connections,
            e_connections: E_CONNS,
            tokens: a.tokens,
            redis_n: a.redis_n,
            claim_only: a.claim_only,
            harness: a.harness,
            env: instance_env(),
        };
        let mut result = BenchResult {
            schema: SCHEMA,
            label: a.label.clone(),
            source: None,
            started_at,
            elapsed_s: 0.0,
            command: command_line(),
            commit,
            dirty,
            machine,
            settings,
            ..BenchResult::default()
        };
        log(&format!("commit {}; {}", result.commit_line(), result.machine_line()));
        log(&format!("runs: {} x {}s, redis-benchmark n={} per master", a.runs, a.secs, a.redis_n));

        // R
        let mut fig = Figures::default();
        for i in 1..=a.runs {
            log(&format!("R run {i}/{}: pipelined -P 16, n={} per master", a.runs, a.redis_n));
            fig.r_p16.push(sample(self.measured(&format!("R -P16 run {i}"), |b| b.r_run(16, a.redis_n))?));
            log(&format!("R run {i}/{}: unpipelined -P 1, n={} per master", a.runs, a.redis_n / 4));
            fig.r_p1.push(sample(self.measured(&format!("R -P1 run {i}"), |b| b.r_run(1, a.redis_n / 4))?));
        }
        log(&format!("R: unlinked {} keys", cluster::unlink_pattern(&format!("{{{}:*", self.rtag))?));
        log(&format!("R EVALSHA -P16 (calls/s): {}", fig.r_p16.describe(0)));
        log(&format!("R EVALSHA -P1 (calls/s): {}", fig.r_p1.describe(0)));

        // The instance under test.
        log(&format!("starting flashgrab serve on {} (key prefix '{KEY_PREFIX}', database {BENCH_DB})", self.base));
        self.serve = Some(self.start_instance(a.port, &self.out.join("serve.log"), true)?);
        log(&format!("flashgrab serve ready (pid {})", self.serve_pid()));

        // H
        let h = self.series(&format!("H (wrk -t1 -c{} -d{}s GET /healthz)", a.connections, a.secs), Self::h_run)?;
        fig.h = Series::new(h.into_iter().map(sample).collect());
        log(&format!("H GET /healthz (req/s): {}", fig.h.describe(0)));

        if a.harness {
            let h = harness::run(self, &fig)?;
            result.ratios = Ratios::of(fig.h.median, fig.r_p16.median, fig.r_p1.median, None, None);
            result.harness = Some(h);
        } else {
            self.wrk_figures(&mut fig)?;
            result.ratios = Ratios::of(fig.h.median, fig.r_p16.median, fig.r_p1.median, fig.c.median, fig.f.median);
        }
        result.figures = fig;
        result.disturbed = std::mem::take(&mut self.disturbed);
        result.elapsed_s = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        Ok(result)
    }

    /// C, F, E and D.
    fn wrk_figures(&mut self, fig: &mut Figures) -> anyhow::Result<()> {
        let a = self.a.clone();
        log(&format!("C: minting {} user tokens", a.tokens));
        crate::tokens::write(JWT_SECRET, a.tokens, "u", 7200, &self.tokens_file)?;
        std::fs::write(&self.claim_lua, wrk::claim_lua(&self.tokens_file))?;
        let pids = Pids::find()?;

        let c = self
            .series(&format!("C (wrk -t1 -c{} -d{}s POST claim)", a.connections, a.secs), |b, i| b.c_run(i, &pids))?;
        for ((v, run), d) in c {
            fig.c.push(Sample { value: v, disturbed: d });
            fig.c_runs.push(run);
        }
        log(&format!("C claims/s: {}", fig.c.describe(0)));

        let f = self.series(
            &format!("F (flashgrab-floor, wrk -t1 -c{} -d{}s POST claim)", a.connections, a.secs),
            Self::f_run,
        )?;
        fig.f = Series::new(f.into_iter().map(sample).collect());
        log(&format!("F floor claims/s: {}", fig.f.describe(0)));

        for floor in [false, true] {
            let what = if floor { "floor" } else { "flashgrab" };
            let runs = self
                .series(&format!("E {what} (wrk -t1 -c{E_CONNS} -d{}s POST claim, closed loop)", a.secs), |b, i| {
                    b.e_run(floor, i)
                })?;
            let mut e = Closed::default();
            for (v, d) in runs {
                e.req_s.push(Sample { value: v[0], disturbed: d });
                e.p50_ms.push(Sample { value: v[1], disturbed: d });
                e.p99_ms.push(Sample { value: v[2], disturbed: d });
            }
            log(&format!(
                "E {what}: req/s {}; p50 {}; p99 {}",
                e.req_s.describe(0),
                e.p50_ms.describe(2),
                e.p99_ms.describe(2)
            ));
            if floor {
                fig.e_floor = Some(e);
            } else {
                fig.e_flashgrab = Some(e);
            }
        }

        let rate = (fig.c.median.unwrap_or(0.0) / 2.0).floor() as u64;
        if rate == 0 {
            bail!("C is 0: no claim succeeded (see {}/wrk-claim.*.txt and serve.log)", self.out.display());
        }
        let users = rate * u64::from(a.secs) * 11 / 10 + 1000;
        let runs = self.series(&format!("D (drop --rate {rate} -c64 --duration {}, open loop)", a.secs), |b, i| {
            b.d_run(i, rate, users)
        })?;
        let mut d = OpenLoop { rate_asked: rate as f64, ..OpenLoop::default() };
        for (v, dist) in runs {
            let s = |value| Sample { value, disturbed: dist };
            d.p50_ms.push(s(v[0]));
            d.p90_ms.push(s(v[1]));
            d.p99_ms.push(s(v[2]));
            d.p999_ms.push(s(v[3]));
            d.max_ms.push(s(v[4]));
            d.achieved.push(s(v[5]));
        }
        fig.d = Some(d);
        Ok(())
    }

    /// Removes what a run made: its instances, its keys (its own tags and
    /// the key prefix), the database and the queue's messages.
    fn cleanup(&mut self) {
        self.extra.clear();
        if let Some(mut s) = self.serve.take() {
            log(&format!("stopping flashgrab serve (pid {})", s.pid()));
            s.stop();
        }
        if cluster::healthy() {
            let mut n1 = 0;
            for tag in [&self.rtag, &self.ftag] {
                n1 += cluster::unlink_pattern(&format!("{{{tag}:*")).unwrap_or(0);
            }
            let n2 = cluster::unlink_pattern(&format!("{{{KEY_PREFIX}:*")).unwrap_or(0);
            log(&format!("unlinked {n1} redis-benchmark/floor keys and {n2} keys of prefix '{KEY_PREFIX}'"));
        }
        let dropped = Command::new("mysql")
            .args(["-h", "127.0.0.1", "-P", "3306", "-u", "root", "-e", &format!("DROP DATABASE IF EXISTS {BENCH_DB}")])
            .stderr(Stdio::null())
            .status();
        if dropped.is_ok_and(|s| s.success()) {
            log(&format!("dropped MySQL database {BENCH_DB}"));
        }
        let purged = Command::new("timeout")
            .args(["20", "rabbitmqctl", "-q", "purge_queue", &format!("{KEY_PREFIX}.claims")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if purged.is_ok_and(|s| s.success()) {
            log(&format!("purged RabbitMQ queue {KEY_PREFIX}.claims"));
        }
        let _ = std::fs::remove_file(&self.tokens_file);
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn sample(w: Watched<f64>) -> Sample {
    Sample { value: w.0, disturbed: w.1 }
}

/// The five keys of R's claim script call on hash tag `t`.
fn r_keys(t: &str) -> [String; 5] {
    [
        format!("{t}:c:camp:0"),
        format!("{t}:c:camp:0:h"),
        format!("{t}:c:camp:0:cp"),
        format!("{t}:c:camp:0:idem"),
        format!("{t}:outbox"),
    ]
}

/// The rate (second column) of the last line of `redis-benchmark --csv`.
fn parse_benchmark_csv(text: &str) -> Option<f64> {
    let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
    last.split("\",\"").nth(1)?.trim_matches('"').parse().ok()
}

/// The processes whose CPU a C run reports, beside the instance.
struct Pids {
    masters: Vec<u32>,
    replicas: Vec<u32>,
    db: Vec<u32>,
    mq: Vec<u32>,
    hz: f64,
}

impl Pids {
    fn find() -> anyhow::Result<Self> {
        let master_ports: Vec<u16> = cluster::masters()?.iter().map(|m| m.port).collect();
        let (mut masters, mut replicas) = (Vec::new(), Vec::new());
        for port in 7000..=7005 {
            let Some(pid) = procs::redis_server_pid(port) else { continue };
            if master_ports.contains(&port) { masters.push(pid) } else { replicas.push(pid) }
        }
        let mut db = procs::pids_named("mariadbd");
        if db.is_empty() {
            db = procs::pids_named("mysqld");
        }
        Ok(Self { masters, replicas, db, mq: procs::pids_named("beam.smp"), hz: procs::clock_ticks() })
    }

    /// Ticks of: the instance, masters, replicas, database, broker.
    fn ticks(&self, serve: &[u32]) -> [u64; 5] {
        [
            procs::ticks(serve),
            procs::ticks(&self.masters),
            procs::ticks(&self.replicas),
            procs::ticks(&self.db),
            procs::ticks(&self.mq),
        ]
    }
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn git_commit(repo: &Path) -> (String, bool) {
    let commit = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_owned(), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let dirty = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["diff", "--quiet", "HEAD"])
        .status()
        .is_ok_and(|s| s.code() == Some(1));
    (commit, dirty)
}

/// This process's command line, as a shell would take it; with
/// FG_BENCH_PROGRAM set (scripts/bench sets it to `scripts/bench`), that in
/// place of `flashgrab-loadtest bench`.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    let (program, rest) = match std::env::var("FG_BENCH_PROGRAM") {
        Ok(p) => (p, args.get(2..).unwrap_or_default()),
        Err(_) => {
            let first =
                args.first().map(|a| Path::new(a).file_name().unwrap_or_default().to_string_lossy().into_owned());
            (first.unwrap_or_default(), args.get(1..).unwrap_or_default())
        }
    };
    std::iter::once(program).chain(rest.iter().map(|a| shell_word(a))).collect::<Vec<_>>().join(" ")
}

/// `a` as a shell word: quoted when it holds anything but plain characters.
fn shell_word(a: &str) -> String {
    let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain { a.to_owned() } else { format!("'{}'", a.replace('\'', "'\\''")) }
}

/// The FLASHGRAB_* settings of the environment the instance inherits
/// (FLASHGRAB_CLAIM_BATCH, FLASHGRAB_DURABILITY, ...), secrets, addresses
/// and the test suite's variables left out.
fn instance_env() -> Vec<String> {
    let mut v: Vec<String> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("FLASHGRAB_")
                && !["TOKEN", "SECRET", "PASSWORD", "URL", "NODES", "_TEST_", "STATE_DIR", "_TLS_"]
                    .iter()
                    .any(|bad| k.contains(bad))
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    v.sort();
    v
}

/// The repository: --repo, $FG_ROOT, or the nearest folder at or above the
/// current one that holds lua/claim.lua.
fn find_repo(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg.map(Path::to_path_buf).or_else(|| std::env::var_os("FG_ROOT").map(PathBuf::from)) {
        return Ok(p);
    }
    let cwd = std::env::current_dir()?;
    cwd.ancestors()
        .find(|d| d.join("lua/claim.lua").is_file())
        .map(Path::to_path_buf)
        .context("no lua/claim.lua in or above the current folder: run from the repository or give --repo")
}

fn port_taken(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

/// SIGINT / SIGTERM set the flag (the run stops at the next step and cleans
/// up); a second one exits at once.
fn watch_signals(flag: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                if flag.swap(true, Ordering::Relaxed) {
                    std::process::exit(130);
                }
                warn("interrupted: stopping after this step and cleaning up (again to quit at once)");
            }
        });
    });
}

pub fn run(mut a: BenchArgs) -> anyhow::Result<()> {
    let (runs, secs, redis_n, tokens) = if a.quick { (1, 3, 60_000, 200_000) } else { (3, 10, 200_000, 600_000) };
    a.runs = a.runs_given.unwrap_or(runs);
    a.secs = a.secs_given.unwrap_or(secs);
    a.redis_n = a.redis_n_given.unwrap_or(redis_n);
    a.tokens = a.tokens_given.unwrap_or(tokens);
    let _ = a.no_build;
    let repo = find_repo(a.repo.as_deref())?;
    let exe = std::env::current_exe().context("locating this binary")?;
    let bin_dir = a.bin_dir.clone().unwrap_or_else(|| exe.parent().map(Path::to_path_buf).unwrap_or_default());
    let flashgrab = bin_dir.join("flashgrab");
    let floor = bin_dir.join("flashgrab-floor");
    for b in [&flashgrab, &floor] {
        anyhow::ensure!(
            b.is_file(),
            "{} missing (cargo build --release -p flashgrab -p flashgrab-loadtest)",
            b.display()
        );
    }
    for (tool, package) in [("wrk", "wrk"), ("redis-benchmark", "redis-tools")] {
        let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        anyhow::ensure!(found.is_ok(), "{tool} not found: apt-get install -y {package}");
    }
    anyhow::ensure!(
        cluster::healthy(),
        "no healthy Redis Cluster on {}:{}: run scripts/stack up",
        cluster::HOST,
        cluster::SEED_PORT
    );
    for p in [a.port, a.port.wrapping_add(5)].into_iter().chain(a.harness.then_some(a.port.wrapping_add(1))) {
        anyhow::ensure!(!port_taken(p), "something already answers on 127.0.0.1:{p}: pick another --port");
    }
    let out = match &a.out {
        Some(o) => o.clone(),
        None => bin_dir
            .parent()
            .unwrap_or(&bin_dir)
            .join("bench")
            .join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    log(&format!("results in {}", out.display()));
    let interrupted = Arc::new(AtomicBool::new(false));
    watch_signals(interrupted.clone());
    let pid = std::process::id();
    let mut bench = Bench {
        serve_args: if a.claim_only { vec!["--no-relay", "--no-persist"] } else { Vec::new() },
        base: format!("http://127.0.0.1:{}", a.port),
        floor_url: format!("http://127.0.0.1:{}", a.port.wrapping_add(5)),
        rtag: format!("benchr{pid}"),
        ftag: format!("benchf{pid}"),
        rt: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        http: Http::new(4, Duration::from_secs(10)),
        serve: None,
        extra: Vec::new(),
        interrupted,
        disturbed: Vec::new(),
        tokens_file: out.join("tokens.txt"),
        claim_lua: out.join("claim.lua"),
        loadtest: exe,
        flashgrab,
        floor,
        repo,
        out: out.clone(),
        a,
    };
    let result = bench.run();
    let interrupted = bench.interrupted.load(Ordering::Relaxed);
    drop(bench);
    // A signal to the process group also stops wrk and the instance, so the
    // step it cut short fails on its own: that is the interruption.
    if interrupted {
        if let Err(e) = &result {
            log(&format!("the step cut short: {e:#}"));
        }
        bail!("interrupted");
    }
    let result = result?;
    let path = out.join("result.json");
    result.write(&path)?;
    log(&format!("done in {:.1} s; result in {}", result.elapsed_s, path.display()));
    println!("commit: {}", result.commit_line());
    println!("machine: {}", result.machine_line());
    println!("command: {}", result.command);
    println!();
    print!("{}", result::text_table(&result));
    let cpu = result::cpu_lines(&result);
    if !cpu.is_empty() {
        println!();
        println!("CPU split during the C runs (cores, of {}):", result.machine.cores);
        for l in cpu {
            println!("{l}");
        }
    }
    println!();
    println!("result: {} (bench-markdown renders it)", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_rate() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"EVALSHA abc 5 ...\",\"61142.20\",\"12.3\"\n";
        assert_eq!(parse_benchmark_csv(csv), Some(61_142.20));
        assert_eq!(parse_benchmark_csv("Error: connection refused\n"), None);
    }

    #[test]
    fn command_words_are_quoted_when_needed() {
        assert_eq!(shell_word("--claim-only"), "--claim-only");
        assert_eq!(shell_word("target/bench/x"), "target/bench/x");
        assert_eq!(shell_word("smoke run"), "'smoke run'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn r_keys_share_the_tag() {
        let k = r_keys("{benchr1:3}");
        assert!(k.iter().all(|k| k.starts_with("{benchr1:3}:")));
        assert_eq!(k[4], "{benchr1:3}:outbox");
    }
}
