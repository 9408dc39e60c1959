//! The `flashgrab` binary: parse the command line, load the configuration,
//! start logging, call the library. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use flashgrab::auth::JwtKeys;
use flashgrab::config::{Needs, Settings};
use flashgrab::startup::{self, Application};

/// mimalloc instead of glibc malloc: a profile of the claim path at ~10k
/// claims/s spent about a fifth of the service's CPU in glibc's allocator
/// (many small, short-lived allocations across two runtime threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Coupon flash-grab service: timed coupon drops on a sharded Redis Cluster,
/// written through RabbitMQ into MySQL.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// TOML file with settings (keys: listen, redis_nodes, amqp_url, mysql_url,
    /// admin_token, user_jwt_secret, key_prefix, ...). FLASHGRAB_* environment
    /// variables override it.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Development mode: generate and print the admin token and the user JWT
    /// secret when they are not set.
    #[arg(long, global = true)]
    dev: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (claims, campaigns, coupons) with the outbox relay
    /// and, unless --no-persist, the persist worker in the same process.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Do not run the RabbitMQ -> MySQL persist worker here (run
        /// `flashgrab persist` separately).
        #[arg(long)]
        no_persist: bool,
        /// Do not run the Redis outbox -> RabbitMQ relay here (some other
        /// instance must, or claims are never persisted).
        #[arg(long)]
        no_relay: bool,
    },
    /// Run only the persist worker: RabbitMQ claims queue -> MySQL.
    Persist {
        #[command(flatten)]
        common: Common,
    },
    /// Compare the claims granted in Redis with the rows in MySQL for one
    /// campaign, and check oversell, per-user limit and stock conservation.
    /// Exit code 0 when all is well, 1 when not (the report says what).
    Reconcile {
        #[command(flatten)]
        common: Common,
        /// The campaign id.
        #[arg(long)]
        campaign: String,
        /// Write the missing rows into MySQL, and write grants Redis lost (a
        /// failover in `fast` mode) back into Redis from their rows: record,
        /// holder, idempotency key, one unit less. Idempotent; never deletes.
        #[arg(long)]
        repair: bool,
    },
    /// Archive one ended campaign: delete its per-shard Redis data once MySQL
    /// holds every grant.
    ///
    /// The data is the shards' stock, holders, claim records, idempotency
    /// keys and transfer journals: without archiving Redis memory grows with
    /// every drop ever run. Checks first, and archives only if all hold: the campaign
    /// ended (or was closed) at least --after-secs ago, no stock transfer is
    /// journaled (interrupted ones are landed first), every grant has its
    /// row, and reconcile matches. Afterwards the campaign reads from MySQL:
    /// stats, coupon lists, redeem and release work as before; claims answer
    /// 410 `ended` (a keyed retry still gets its coupon from its row);
    /// `reconcile` compares the rows with the count kept at archive time.
    /// Safe to repeat and to run next to `serve`'s automatic pass
    /// (FLASHGRAB_ARCHIVE_AFTER_SECS).
    #[command(after_help = ARCHIVE_EXIT_CODES)]
    Archive {
        #[command(flatten)]
        common: Common,
        /// The campaign id.
        #[arg(long)]
        campaign: String,
        /// Archive only if the campaign has been over (ended or closed) for at
        /// least this many seconds: late keyed retries and the pipeline's tail
        /// have had time.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        after_secs: u64,
    },
    /// See and replay the dead-letter queue of the claims pipeline
    /// (`<prefix>.claims.dlq`): the claims the persist worker could not store,
    /// each with its reason. Needs only FLASHGRAB_AMQP_URL and
    /// FLASHGRAB_KEY_PREFIX (and FLASHGRAB_AMQP_TIMEOUT_MS).
    #[command(after_help = DLQ_EXIT_CODES)]
    Dlq {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Apply the MySQL migrations (creating the database if needed) and exit.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Mint a user JWT with the configured secret (for trying the API).
    Token {
        #[command(flatten)]
        common: Common,
        /// The user id (`sub` claim).
        #[arg(long, default_value = "demo-user")]
        user: String,
        /// Lifetime of the token in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: i64,
    },
}

const DLQ_EXIT_CODES: &str = "Exit codes: 0 done (list: the queue is empty), 1 list: the queue holds dead \
letters, 2 usage or configuration error, 3 RabbitMQ unreachable or no such queue (replay: what was \
sent back before the error stays sent back; running it again is safe).";

const ARCHIVE_EXIT_CODES: &str = "Exit codes: 0 archived (or archived before: leftover keys deleted again), \
1 not archivable yet (the reason is printed: not over long enough, transfers journaled, grants not persisted, \
reconcile mismatch), 2 bad arguments or configuration, 3 a backend failed or no such campaign (running it again \
is safe).";

#[derive(Subcommand)]
enum DlqAction {
    /// Show how many messages and claims the dead-letter queue holds, how
    /// many per reason, and the first records with their reasons. Takes
    /// nothing away: every message read goes back to the queue. Exit code 0
    /// when the queue is empty, 1 when it is not.
    #[command(after_help = DLQ_EXIT_CODES)]
    List {
        /// Records to show.
        #[arg(long, default_value_t = 10, value_name = "N")]
        limit: usize,
    },
    /// After the cause is fixed: move the dead-lettered messages back to the
    /// claims exchange, oldest first, for the persist worker to store. Safe
    /// to repeat: the insert is idempotent per coupon id, and what is still
    /// refused comes back to the dead-letter queue with its reason. Exit
    /// code 0 when done.
    #[command(after_help = DLQ_EXIT_CODES)]
    Replay {
        /// Replay at most N messages (default: all that are there now).
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

fn load(common: &Common, needs: Needs) -> Result<Settings, ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    let settings = Settings::load_for(common.config.as_deref(), env, common.dev, needs).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    flashgrab::telemetry::init(settings.log_format);
    Ok(settings)
}

fn print_dev_help(settings: &Settings, addr: std::net::SocketAddr) {
    let token =
        JwtKeys::new(settings.user_jwt_secret.as_bytes()).sign("demo-user", chrono::Utc::now().timestamp() + 86_400);
    println!("flashgrab is listening on http://{addr}");
    if settings.generated_secrets {
        println!(
            "\n  dev mode: generated secrets (set FLASHGRAB_ADMIN_TOKEN / FLASHGRAB_USER_JWT_SECRET to keep them)"
        );
    }
    // Export lines, not prose: pasted into another shell they let the load
    // test and `flashgrab token` use this instance's secrets.
    println!("\n  marketing console: http://{addr}/console (sign in with the FLASHGRAB_ADMIN_TOKEN below)");
    println!("\n  in another shell, paste:");
    println!(
        "    export FLASHGRAB_ADMIN_TOKEN={} FLASHGRAB_USER_JWT_SECRET={}",
        settings.admin_token, settings.user_jwt_secret
    );
    println!("  then load test it:");
    println!("    cargo run --release -p flashgrab-loadtest -- drop --url http://{addr} --users 20000 --stock 5000");
    if settings.protect.ip_rate.is_some() && addr.ip().is_loopback() {
        println!(
            "  (the per-address limit is on, and a load test from this machine is one address: most answers will be\n   429; restart with FLASHGRAB_IP_RATE=0 to load the claim path)"
        );
    }
    println!("  user token (sub=demo-user, 24h):\n    {token}\n");
    println!("  create a drop of 1000 coupons starting 5 s after you paste this (GNU date):");
    println!(
        "    CAMPAIGN=$(curl -s -X POST http://{addr}/v1/campaigns -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n      -d '{{\"name\":\"demo drop\",\"total_stock\":1000,\"starts_at\":\"'$(date -u -d '+5 sec' +%FT%TZ)'\",\"ends_at\":\"'$(date -u -d '+2 hour' +%FT%TZ)'\",\"coupon\":{{\"discount\":{{\"type\":\"fixed\",\"amount_cents\":500}},\"valid_for_days\":7}}}}' \\\n      | sed -E 's/.*\"id\":\"([0-9A-Z]+)\".*/\\1/'); echo \"$CAMPAIGN\"",
        settings.admin_token
    );
    println!("  then claim one (after the start):");
    println!("    curl -s -X POST http://{addr}/v1/campaigns/$CAMPAIGN/claim -H 'Authorization: Bearer {token}'");
    println!("  and list your coupons:");
    println!("    curl -s http://{addr}/v1/me/coupons -H 'Authorization: Bearer {token}'\n");
}

async fn serve(settings: Settings) -> ExitCode {
    tracing::info!(?settings, "starting flashgrab serve");
    let app = match Application::build(&settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("flashgrab: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = app.local_addr();
    if settings.generated_secrets || std::env::var_os("FLASHGRAB_PRINT_HELP").is_some() {
        print_dev_help(&settings, addr);
    }
    tracing::info!(%addr, "listening");
    match app.run_until(startup::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

async fn persist(settings: Settings) -> ExitCode {
    let db = match startup::migrate(&settings).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("flashgrab persist: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = std::sync::Arc::new(flashgrab::metrics::PipelineMetrics::default());
    let worker =
        flashgrab::persist::worker::PersistWorker::new(db, settings.amqp(), &settings.key_prefix, metrics.clone());
    let token = tokio_util::sync::CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        startup::shutdown_signal().await;
        stop.cancel();
    });
    // /healthz and /metrics for Prometheus; a worker next to a `serve` on
    // the same address just goes without (the work matters, not the port).
    match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => {
            let app = flashgrab::http::metrics::worker_router(metrics);
            let stopped = token.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).with_graceful_shutdown(stopped.cancelled_owned()).await;
            });
        }
        Err(e) => tracing::warn!(addr = %settings.listen, error = %e, "persist worker: no /metrics listener"),
    }
    worker.run(token).await;
    ExitCode::SUCCESS
}

async fn reconcile(settings: Settings, campaign: &str, repair: bool) -> ExitCode {
    let Some(id) = flashgrab::domain::CampaignId::parse(campaign) else {
        eprintln!("flashgrab reconcile: {campaign:?} is not a campaign id (26-character ULID)");
        return ExitCode::from(2);
    };
    let report = async {
        let db = startup::migrate(&settings).await.map_err(|e| e.to_string())?;
        let stock =
            flashgrab::stock::StockStore::connect_to(&settings.redis(), &settings.key_prefix, settings.redis_timeout)
                .await
                .map_err(|e| format!("redis cluster: {e}"))?;
        let c = db.get_campaign(&id).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no campaign {id}"))?;
        flashgrab::service::reconcile::reconcile(&stock, &db, &c, repair).await.map_err(|e| e.to_string())
    };
    match report.await {
        Ok(r) => {
            println!("{r}");
            if r.matched() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("flashgrab reconcile: {e}");
            ExitCode::from(3)
        }
    }
}

async fn archive(settings: Settings, campaign: &str, after_secs: u64) -> ExitCode {
    use flashgrab::service::{ArchiveOutcome, ArchiveService, CampaignService};
    let Some(id) = flashgrab::domain::CampaignId::parse(campaign) else {
        eprintln!("flashgrab archive: {campaign:?} is not a campaign id (26-character ULID)");
        return ExitCode::from(2);
    };
    let outcome = async {
        let db = startup::migrate(&settings).await.map_err(|e| e.to_string())?;
        let stock =
            flashgrab::stock::StockStore::connect_to(&settings.redis(), &settings.key_prefix, settings.redis_timeout)
                .await
                .map_err(|e| format!("redis cluster: {e}"))?;
        let campaigns = CampaignService::new(db.clone(), stock.clone(), settings.campaign_cache_ttl);
        ArchiveService::new(db, stock, campaigns)
            .archive(&id, chrono::Utc::now(), std::time::Duration::from_secs(after_secs))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no campaign {id}"))
    };
    match outcome.await {
        Ok(o) => {
            println!("campaign {id}: {o}");
            if matches!(o, ArchiveOutcome::NotArchivable(_)) { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("flashgrab archive: {e}");
            ExitCode::from(3)
        }
    }
}

/// `flashgrab dlq`: talks to RabbitMQ only, so the secrets of `serve` are
/// not required.
async fn dlq(common: &Common, action: DlqAction) -> ExitCode {
    let settings = match load(common, Needs::NONE) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (url, prefix, t) = (&settings.amqp(), &settings.key_prefix, settings.amqp_timeout);
    match action {
        DlqAction::List { limit } => match flashgrab::persist::dlq::list(url, prefix, limit, t).await {
            Ok(l) => {
                print!("{l}");
                if l.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
            }
            Err(e) => {
                eprintln!("flashgrab dlq list: {e}");
                ExitCode::from(3)
            }
        },
        DlqAction::Replay { limit } => match flashgrab::persist::dlq::replay(url, prefix, limit, t).await {
            Ok(r) => {
                print!("{r}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("flashgrab dlq replay: {e}");
                ExitCode::from(3)
            }
        },
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { common, no_persist, no_relay } => match load(&common, Needs::ALL) {
            Ok(mut s) => {
                s.run_persist = !no_persist;
                s.run_relay = !no_relay;
                serve(s).await
            }
            Err(code) => code,
        },
        Command::Persist { common } => match load(&common, Needs::NONE) {
            Ok(s) => persist(s).await,
            Err(code) => code,
        },
        Command::Reconcile { common, campaign, repair } => match load(&common, Needs::NONE) {
            Ok(s) => reconcile(s, &campaign, repair).await,
            Err(code) => code,
        },
        Command::Archive { common, campaign, after_secs } => match load(&common, Needs::NONE) {
            Ok(s) => archive(s, &campaign, after_secs).await,
            Err(code) => code,
        },
        Command::Dlq { common, action } => dlq(&common, action).await,
        Command::Migrate { common } => match load(&common, Needs::NONE) {
            Ok(s) => match startup::migrate(&s).await {
                Ok(_) => {
                    println!("migrations applied to {}", s.mysql_url.rsplit('/').next().unwrap_or("?"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flashgrab migrate: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
        Command::Token { common, user, ttl } => match load(&common, Needs::JWT) {
            Ok(s) => {
                println!(
                    "{}",
                    JwtKeys::new(s.user_jwt_secret.as_bytes()).sign(&user, chrono::Utc::now().timestamp() + ttl)
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}
