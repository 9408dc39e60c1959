//! `flashgrab-floor`: the naive claim server that issue 3's speed target is
//! judged against: axum on hyper, one `EVALSHA lua/claim.lua` per request
//! through the cluster-async client, the script's record as the 201 body.
//! Nothing else: no JWT check (the user id is the token's signature, so
//! every pre-minted token is a distinct user), no rate limits, no metrics,
//! no campaign lookup, no batching, no sold-out memory.
//!
//! Why it exists: the benchmark driver (`flashgrab-loadtest bench`, run by
//! `scripts/bench`) runs it next to flashgrab in the same run,
//! with the same wrk script and the same Redis Cluster, so that "what does
//! the bare minimum of this shape reach on this machine" is a measured
//! figure (F, and F/L), not a guess. It is a measuring tool, not a product:
//! it never checks a campaign window and its shards are its own keys.
//!
//! Keys: `--shards` shards in the service's own key layout (prefix
//! `--prefix`), spread evenly over the 64 outbox buckets and hence over the
//! masters; each shard hash is created with a huge stock at start. The
//! caller unlinks them afterwards (`{<prefix>:*` on every master).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use flashgrab::domain::campaign::home_shard;
use flashgrab::stock::keys::{KeyLayout, OUTBOX_BUCKETS, ShardKeys};
use redis::Value;
use redis::cluster_async::ClusterConnection;

/// The naive claim server (axum + one cluster-async EVALSHA of
/// lua/claim.lua per request): the floor flashgrab's claim path is compared
/// with in `flashgrab-loadtest bench`. Serves POST /v1/campaigns/{id}/claim (the id is
/// ignored; a Bearer token's signature is the user id) and GET /healthz.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (loopback only: this is a measuring tool).
    #[arg(long, default_value = "127.0.0.1:8095")]
    listen: SocketAddr,
    /// Redis Cluster seed node.
    #[arg(long, default_value = "redis://127.0.0.1:7000")]
    redis: String,
    /// Key prefix of the floor's shards (unlink `{<prefix>:*` afterwards).
    #[arg(long, default_value = "floor")]
    prefix: String,
    /// Shards (the service's default for a large drop on 3 masters is 12).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=64))]
    shards: u32,
    /// Tokio worker threads (default: one per core, as flashgrab serve).
    #[arg(long)]
    threads: Option<usize>,
}

struct Floor {
    conn: ClusterConnection,
    script: redis::Script,
    shards: Vec<ShardKeys>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let run = || -> anyhow::Result<()> {
        anyhow::ensure!(args.listen.ip().is_loopback(), "--listen must be a loopback address, not {}", args.listen);
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = args.threads {
            rt.worker_threads(n.max(1));
        }
        rt.enable_all().build()?.block_on(serve(&args))
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flashgrab-floor: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve(args: &Args) -> anyhow::Result<()> {
    let client = redis::cluster::ClusterClient::new(vec![args.redis.clone()])?;
    let mut conn = client
        .get_async_connection()
        .await
        .with_context(|| format!("connecting to the Redis Cluster at {} (start it: scripts/stack up)", args.redis))?;
    let layout = KeyLayout::new(&args.prefix);
    let shards: Vec<ShardKeys> = (0..args.shards)
        .map(|s| {
            let bucket = (s as usize * usize::from(OUTBOX_BUCKETS) / args.shards as usize) as u16;
            layout.shard(bucket, "floor", s)
        })
        .collect();
    for k in &shards {
        // The fields lua/claim.lua reads: open since 1970, until far away.
        let _: () = redis::cmd("HSET")
            .arg(&k.hash)
            .arg(&[
                ("remaining", "1000000000000"),
                ("starts_ms", "0"),
                ("ends_ms", "9000000000000000"),
                ("closed", "0"),
                ("limit", "1"),
                ("vfrom_ms", "0"),
                ("vuntil_ms", "0"),
                ("vdays", "7"),
            ])
            .query_async(&mut conn)
            .await
            .context("creating the floor's shards")?;
    }
    let state = Arc::new(Floor { conn, script: redis::Script::new(include_str!("../../../lua/claim.lua")), shards });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/campaigns/{id}/claim", post(claim))
        .with_state(state);
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    eprintln!("flashgrab-floor: listening on {} ({} shards, prefix '{}')", args.listen, args.shards, args.prefix);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn claim(State(f): State<Arc<Floor>>, headers: HeaderMap) -> Response {
    let Some(user) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.rsplit('.').next()) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    // The user's home shard, as the service picks it.
    let shard = home_shard(user, f.shards.len() as u32);
    let k = &f.shards[shard as usize];
    let coupon = ulid::Ulid::new().to_string();
    let mut conn = f.conn.clone();
    let reply: redis::RedisResult<Value> = f
        .script
        .key(&k.hash)
        .key(&k.holders)
        .key(&k.coupons)
        .key(&k.idem)
        .key(&k.outbox)
        .arg("floor")
        .arg(shard)
        .arg(user)
        .arg(&coupon)
        .arg("")
        .invoke_async(&mut conn)
        .await;
    match reply {
        Ok(Value::Array(claims)) => match claims.first() {
            Some(Value::Array(r)) => match (r.first(), r.get(1)) {
                (Some(Value::Int(1)), Some(Value::BulkString(record))) => {
                    (StatusCode::CREATED, [(CONTENT_TYPE, "application/json")], record.clone()).into_response()
                }
                _ => StatusCode::CONFLICT.into_response(),
            },
            _ => StatusCode::BAD_GATEWAY.into_response(),
        },
        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
