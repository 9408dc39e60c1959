//! The `flashgrab` binary: parse the command line, load the configuration,
//! start logging, call the library. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use flashgrab::auth::JwtKeys;
use flashgrab::config::Settings;
use flashgrab::startup::{self, Application};

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
    /// Serve the HTTP API (claims, campaigns, coupons).
    Serve {
        #[command(flatten)]
        common: Common,
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

fn load(common: &Common) -> Result<Settings, ExitCode> {
    let settings = Settings::load(
        common.config.as_deref(),
        |k| std::env::var(k).ok(),
        common.dev,
    )
    .map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    flashgrab::telemetry::init(settings.log_format);
    Ok(settings)
}

fn print_dev_help(settings: &Settings, addr: std::net::SocketAddr) {
    let token = JwtKeys::new(settings.user_jwt_secret.as_bytes())
        .sign("demo-user", chrono::Utc::now().timestamp() + 86_400);
    let start = (chrono::Utc::now() + chrono::Duration::seconds(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let end = (chrono::Utc::now() + chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    println!("flashgrab is listening on http://{addr}");
    if settings.generated_secrets {
        println!(
            "\n  dev mode: generated secrets (set FLASHGRAB_ADMIN_TOKEN / FLASHGRAB_USER_JWT_SECRET to keep them)"
        );
    }
    println!("\n  admin token:      {}", settings.admin_token);
    println!("  user jwt secret:  {}", settings.user_jwt_secret);
    println!("  user token (sub=demo-user, 24h):\n    {token}\n");
    println!("  create a drop of 1000 coupons starting in 5 s:");
    println!(
        "    CAMPAIGN=$(curl -s -X POST http://{addr}/v1/campaigns -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n      -d '{{\"name\":\"demo drop\",\"total_stock\":1000,\"starts_at\":\"{start}\",\"ends_at\":\"{end}\",\"coupon\":{{\"discount\":{{\"type\":\"fixed\",\"amount_cents\":500}},\"valid_for_days\":7}}}}' \\\n      | sed -E 's/.*\"id\":\"([0-9A-Z]+)\".*/\\1/'); echo \"$CAMPAIGN\"",
        settings.admin_token
    );
    println!("  then claim one (after the start):");
    println!(
        "    curl -s -X POST http://{addr}/v1/campaigns/$CAMPAIGN/claim -H 'Authorization: Bearer {token}'"
    );
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { common } => match load(&common) {
            Ok(s) => serve(s).await,
            Err(code) => code,
        },
        Command::Migrate { common } => match load(&common) {
            Ok(s) => match startup::migrate(&s).await {
                Ok(_) => {
                    println!(
                        "migrations applied to {}",
                        s.mysql_url.rsplit('/').next().unwrap_or("?")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flashgrab migrate: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
        Command::Token { common, user, ttl } => match load(&common) {
            Ok(s) => {
                println!(
                    "{}",
                    JwtKeys::new(s.user_jwt_secret.as_bytes())
                        .sign(&user, chrono::Utc::now().timestamp() + ttl)
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}
