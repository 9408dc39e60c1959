//! Configuration: compiled-in defaults < `--config` TOML file < `FLASHGRAB_*`
//! environment variables, validated once at start. A bad setting stops the
//! process before anything starts, with an error naming the setting (by its
//! environment name, which is also how the file's keys are spelt, lowercased
//! and without the prefix).
//!
//! Why ~800 lines (200 of them tests): every setting of every subsystem is
//! read and validated here today; issue 19 item 2 (each subsystem owning
//! its settings type, one commented default file) is still open.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_REDIS_NODES: &str = "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/flashgrab";
pub const DEFAULT_KEY_PREFIX: &str = "fg";

/// A setting that is missing or wrong, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {setting}: {reason}")]
pub struct ConfigError {
    /// The environment name of the setting, e.g. `FLASHGRAB_LISTEN`.
    pub setting: String,
    pub reason: String,
}

fn err(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { setting: setting.to_owned(), reason: reason.into() }
}

/// The validated settings of one process.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub redis_nodes: Vec<String>,
    pub amqp_url: String,
    pub mysql_url: String,
    /// PEM of a private CA for `rediss://` (`FLASHGRAB_REDIS_CA_FILE`, else
    /// `FLASHGRAB_TLS_CA_FILE`); `None`: the system roots.
    pub redis_ca: Option<Arc<Vec<u8>>>,
    /// PEM of a private CA for `amqps://` (`FLASHGRAB_AMQP_CA_FILE`, else
    /// `FLASHGRAB_TLS_CA_FILE`).
    pub amqp_ca: Option<Arc<str>>,
    /// A private CA for MySQL (`FLASHGRAB_MYSQL_CA_FILE`, else
    /// `FLASHGRAB_TLS_CA_FILE`): TLS required, certificate and host verified.
    pub mysql_ca_file: Option<PathBuf>,
    pub admin_token: String,
    pub user_jwt_secret: String,
    /// The secret before the current one, still accepted while tokens
    /// signed with it are alive (`FLASHGRAB_USER_JWT_SECRET_PREVIOUS`).
    pub user_jwt_secret_previous: Option<String>,
    /// Clock skew allowed on a token's `exp` and `nbf`
    /// (`FLASHGRAB_JWT_LEEWAY_SECS`, default 30).
    pub jwt_leeway: Duration,
    /// Connection hygiene of the HTTP front door.
    pub front: FrontSettings,
    /// Prefix of Redis keys, queue and exchange names.
    pub key_prefix: String,
    /// Upper bound of any single Redis call.
    pub redis_timeout: Duration,
    /// Upper bound of any single MySQL call (and of acquiring a connection).
    pub mysql_timeout: Duration,
    pub mysql_max_connections: u32,
    /// How long an instance trusts its cached copy of a campaign's terms.
    pub campaign_cache_ttl: Duration,
    /// An outbox entry delivered to a relay and not confirmed for this long
    /// is taken over by another relay (the first one is presumed dead).
    pub relay_reclaim_idle: Duration,
    /// `fast` (answer after the claim script) or `replicated` (and after one
    /// replica acknowledged it, `WAIT 1 <FLASHGRAB_REPLICA_WAIT_MS>`).
    pub durability: crate::stock::Durability,
    /// Claims of one shard sent to Redis in one script call at most
    /// (`FLASHGRAB_CLAIM_BATCH`, 1..=256; 1 turns batching off).
    pub claim_batch: usize,
    /// Upper bound of a graceful shutdown (SIGTERM): draining HTTP, then the
    /// outbox relay, then the persist worker. Past it the process exits
    /// anyway; what is left stays in the outbox / queue for the next one.
    pub shutdown_timeout: Duration,
    /// `text` or `json` logs.
    pub log_format: crate::telemetry::LogFormat,
    /// True when the secrets were generated (dev mode): print them.
    pub generated_secrets: bool,
    /// Run the outbox relay inside `serve` (on by default; off in tests that
    /// only exercise the API).
    pub run_relay: bool,
    /// Run the persist worker inside `serve` (`--no-persist` turns it off).
    pub run_persist: bool,
    /// Upper bound of any single RabbitMQ call (connect, declare, publish,
    /// ack) of the relay and the persist worker.
    pub amqp_timeout: Duration,
    /// Rate limits, load shedding and the Redis breaker of the front end.
    pub protect: ProtectSettings,
    /// Archive a campaign's Redis data this long after it ended or was
    /// closed (`FLASHGRAB_ARCHIVE_AFTER_SECS`, default 24 h; `None` = 0 =
    /// never automatically). See `service::archive`.
    pub archive_after: Option<Duration>,
}

/// A token bucket: `per_sec` replenished every second, at most `burst` at
/// once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

/// How the front end protects the backends (see `protect`). A rate of
/// `None` is switched off (`FLASHGRAB_*_RATE=0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectSettings {
    /// Requests per authenticated user (all user endpoints together).
    pub user_rate: Option<Rate>,
    /// Requests per client address (every `/v1` endpoint), before auth.
    pub ip_rate: Option<Rate>,
    /// Claims per instance that go past the in-memory fast paths (i.e. that
    /// would run the claim script).
    pub claim_rate: Option<Rate>,
    /// Keys each keyed limiter keeps at most; beyond that idle keys are
    /// evicted, and if that is not enough the limiter starts afresh.
    pub rate_max_keys: usize,
    /// Header carrying the client address set by a trusted proxy (e.g.
    /// `x-forwarded-for`, rightmost entry used). `None`: the peer address.
    pub trusted_proxy_header: Option<String>,
    /// Requests allowed to wait on the backends at once; more are answered
    /// 503 at once instead of queueing.
    pub max_in_flight: usize,
    /// Consecutive Redis failures that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails fast before letting a probe through.
    pub breaker_open: Duration,
}

impl Default for ProtectSettings {
    fn default() -> Self {
        Self {
            user_rate: Some(Rate { per_sec: 10, burst: 20 }),
            ip_rate: Some(Rate { per_sec: 1000, burst: 2000 }),
            claim_rate: Some(Rate { per_sec: 20_000, burst: 20_000 }),
            rate_max_keys: 1_000_000,
            trusted_proxy_header: None,
            max_in_flight: 1024,
            breaker_failures: 5,
            breaker_open: Duration::from_millis(1000),
        }
    }
}

/// How the front door treats connections (see `http::server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontSettings {
    /// A request's header must arrive within this
    /// (`FLASHGRAB_HEADER_READ_TIMEOUT_MS`, default 5 s).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after
    /// this (`FLASHGRAB_IDLE_TIMEOUT_MS`, default 60 s).
    pub idle_timeout: Duration,
    /// Open connections per instance at most; more are closed at once
    /// (`FLASHGRAB_MAX_CONNECTIONS`, default 10,000).
    pub max_connections: usize,
}

impl Default for FrontSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

impl std::fmt::Debug for Settings {
    /// Never shows a secret: passwords in URLs are masked, tokens left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("redis", &self.redis())
            .field("amqp", &self.amqp())
            .field("mysql", &self.mysql())
            .field("key_prefix", &self.key_prefix)
            .field("jwt_previous_secret", &self.user_jwt_secret_previous.is_some())
            .field("jwt_leeway", &self.jwt_leeway)
            .field("front", &self.front)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The Redis Cluster to connect to, with its CA.
    pub fn redis(&self) -> crate::backend::RedisTarget {
        crate::backend::RedisTarget { nodes: self.redis_nodes.clone(), ca_pem: self.redis_ca.clone() }
    }

    /// The broker to connect to, with its CA.
    pub fn amqp(&self) -> crate::backend::AmqpTarget {
        crate::backend::AmqpTarget { url: self.amqp_url.clone(), ca_pem: self.amqp_ca.clone() }
    }

    /// The database to connect to, with its CA.
    pub fn mysql(&self) -> crate::backend::MysqlTarget {
        crate::backend::MysqlTarget { url: self.mysql_url.clone(), ca_file: self.mysql_ca_file.clone() }
    }
}

/// A secret from `FLASHGRAB_<NAME>` or from the file named by
/// `FLASHGRAB_<NAME>_FILE` (the Docker/Kubernetes secrets convention; one
/// trailing newline is dropped), not both. `Ok(None)`: neither is set.
fn secret(env: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<String>, ConfigError> {
    let direct = env(&format!("FLASHGRAB_{name}")).filter(|v| !v.is_empty());
    let file_setting = format!("FLASHGRAB_{name}_FILE");
    let Some(path) = env(&file_setting).filter(|v| !v.is_empty()) else {
        return Ok(direct);
    };
    if direct.is_some() {
        return Err(err(&file_setting, format!("set either FLASHGRAB_{name} or {file_setting}, not both")));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| err(&file_setting, format!("cannot read {path}: {e}")))?;
    let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if value.is_empty() {
        return Err(err(&file_setting, format!("{path} is empty")));
    }
    Ok(Some(value.to_owned()))
}

/// A PEM CA file named by `setting` (or the shared `FLASHGRAB_TLS_CA_FILE`):
/// its path and contents, checked to hold at least one certificate.
fn ca_file(env: &impl Fn(&str) -> Option<String>, setting: &str) -> Result<Option<(PathBuf, String)>, ConfigError> {
    let (name, path) = match env(setting).filter(|v| !v.is_empty()) {
        Some(p) => (setting, p),
        None => match env("FLASHGRAB_TLS_CA_FILE").filter(|v| !v.is_empty()) {
            Some(p) => ("FLASHGRAB_TLS_CA_FILE", p),
            None => return Ok(None),
        },
    };
    if !crate::backend::TLS_COMPILED {
        return Err(err(
            name,
            "TLS is not compiled into this build (the `tls` cargo feature): rebuild with default features",
        ));
    }
    let pem = std::fs::read_to_string(&path).map_err(|e| err(name, format!("cannot read {path}: {e}")))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(err(name, format!("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")));
    }
    Ok(Some((PathBuf::from(path), pem)))
}

/// The file layer: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    redis_nodes: Option<Vec<String>>,
    amqp_url: Option<String>,
    mysql_url: Option<String>,
    admin_token: Option<String>,
    user_jwt_secret: Option<String>,
    key_prefix: Option<String>,
    redis_timeout_ms: Option<u64>,
    mysql_timeout_ms: Option<u64>,
    mysql_max_connections: Option<u32>,
    campaign_cache_ms: Option<u64>,
    relay_reclaim_ms: Option<u64>,
    log_format: Option<String>,
    durability: Option<String>,
    replica_wait_ms: Option<u64>,
    claim_batch: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    amqp_timeout_ms: Option<u64>,
    user_rate: Option<u64>,
    user_burst: Option<u64>,
    ip_rate: Option<u64>,
    ip_burst: Option<u64>,
    claim_rate: Option<u64>,
    claim_burst: Option<u64>,
    rate_max_keys: Option<u64>,
    trusted_proxy_header: Option<String>,
    max_in_flight: Option<u64>,
    breaker_failures: Option<u64>,
    breaker_open_ms: Option<u64>,
    archive_after_secs: Option<u64>,
}

/// Random hex string of `bytes` random bytes.
fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

/// The secrets a command uses: only those are required. A command that
/// serves no HTTP (`migrate`, `reconcile`, `persist`) needs neither, `token`
/// only the JWT secret; one it does not need and that is not set is filled
/// with a random value nobody knows (never printed, never accepted from
/// outside), so nothing can authenticate with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub admin_token: bool,
    pub user_jwt_secret: bool,
}

impl Needs {
    /// `serve`: both secrets.
    pub const ALL: Needs = Needs { admin_token: true, user_jwt_secret: true };
    /// `migrate`, `reconcile`, `persist`: no secret.
    pub const NONE: Needs = Needs { admin_token: false, user_jwt_secret: false };
    /// `token`: the JWT secret only.
    pub const JWT: Needs = Needs { admin_token: false, user_jwt_secret: true };
}

impl Settings {
    /// Loads the layers. `env` looks up an environment variable (passed in so
    /// tests need no process-global state); `dev` allows generated secrets.
    /// Both secrets are required ([`Needs::ALL`]); see [`Settings::load_for`].
    pub fn load(
        config_file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        dev: bool,
    ) -> Result<Self, ConfigError> {
        Self::load_for(config_file, env, dev, Needs::ALL)
    }

    /// [`Settings::load`] for a command that requires only the secrets in `needs`.
    pub fn load_for(
        config_file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        dev: bool,
        needs: Needs,
    ) -> Result<Self, ConfigError> {
        let file = match config_file {
            None => FileSettings::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| err("--config", format!("cannot read {}: {e}", p.display())))?;
                toml::from_str(&text).map_err(|e| err("--config", format!("{}: {e}", p.display())))?
            }
        };
        let pick = |name: &str, from_file: Option<String>, default: Option<&str>| -> Option<String> {
            env(&format!("FLASHGRAB_{name}")).filter(|v| !v.is_empty()).or(from_file).or(default.map(str::to_owned))
        };
        let num = |name: &str, from_file: Option<u64>, default: u64| -> Result<u64, ConfigError> {
            match env(&format!("FLASHGRAB_{name}")).filter(|v| !v.is_empty()) {
                Some(v) => v.trim().parse().map_err(|_| err(&format!("FLASHGRAB_{name}"), "must be a whole number")),
                None => Ok(from_file.unwrap_or(default)),
            }
        };

        let listen_s = pick("LISTEN", file.listen, Some(DEFAULT_LISTEN)).unwrap_or_default();
        let listen = listen_s
            .parse()
            .map_err(|_| err("FLASHGRAB_LISTEN", format!("{listen_s:?} is not an address like 127.0.0.1:8080")))?;

        let redis_nodes: Vec<String> = match env("FLASHGRAB_REDIS_NODES").filter(|v| !v.is_empty()) {
            Some(v) => v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
            None => file.redis_nodes.unwrap_or_else(|| DEFAULT_REDIS_NODES.split(',').map(str::to_owned).collect()),
        };
        if redis_nodes.is_empty() {
            return Err(err("FLASHGRAB_REDIS_NODES", "give at least one node, e.g. redis://127.0.0.1:7000"));
        }
        let tls = crate::backend::TLS_COMPILED;
        for n in &redis_nodes {
            crate::backend::check_scheme(n, "redis", "rediss", tls).map_err(|e| err("FLASHGRAB_REDIS_NODES", e))?;
        }
        let redis_nodes = match secret(&env, "REDIS_PASSWORD")? {
            None => redis_nodes,
            Some(pw) => redis_nodes
                .iter()
                .map(|n| crate::backend::with_password(n, &pw))
                .collect::<Result<_, _>>()
                .map_err(|e| err("FLASHGRAB_REDIS_NODES", e))?,
        };

        let amqp_url = pick("AMQP_URL", file.amqp_url, Some(DEFAULT_AMQP_URL)).unwrap_or_default();
        crate::backend::check_scheme(&amqp_url, "amqp", "amqps", tls).map_err(|e| err("FLASHGRAB_AMQP_URL", e))?;
        let amqp_url = match secret(&env, "AMQP_PASSWORD")? {
            None => amqp_url,
            Some(pw) => crate::backend::with_password(&amqp_url, &pw).map_err(|e| err("FLASHGRAB_AMQP_URL", e))?,
        };
        let mysql_url = pick("MYSQL_URL", file.mysql_url, Some(DEFAULT_MYSQL_URL)).unwrap_or_default();
        if !mysql_url.starts_with("mysql://") {
            return Err(err(
                "FLASHGRAB_MYSQL_URL",
                "must be a mysql:// URL with a database, e.g. mysql://root@127.0.0.1:3306/flashgrab",
            ));
        }
        if mysql_url.trim_end_matches('/').rsplit('/').next().is_none_or(|db| db.contains(':') || db.contains('@')) {
            return Err(err("FLASHGRAB_MYSQL_URL", "must name a database, e.g. mysql://root@127.0.0.1:3306/flashgrab"));
        }

        if !tls
            && mysql_url.to_ascii_lowercase().contains("ssl-mode=")
            && !mysql_url.to_ascii_lowercase().contains("ssl-mode=disabled")
        {
            return Err(err(
                "FLASHGRAB_MYSQL_URL",
                "ssl-mode asks for TLS, which is not compiled into this build (the `tls` cargo feature)",
            ));
        }
        let mysql_url = match secret(&env, "MYSQL_PASSWORD")? {
            None => mysql_url,
            Some(pw) => crate::backend::with_password(&mysql_url, &pw).map_err(|e| err("FLASHGRAB_MYSQL_URL", e))?,
        };
        let redis_ca = ca_file(&env, "FLASHGRAB_REDIS_CA_FILE")?.map(|(_, pem)| Arc::new(pem.into_bytes()));
        let amqp_ca = ca_file(&env, "FLASHGRAB_AMQP_CA_FILE")?.map(|(_, pem)| Arc::<str>::from(pem));
        let mysql_ca_file = ca_file(&env, "FLASHGRAB_MYSQL_CA_FILE")?.map(|(path, _)| path);

        let mut generated_secrets = false;
        let admin_token = match secret(&env, "ADMIN_TOKEN")?.or(file.admin_token) {
            Some(t) => t,
            None if dev => {
                generated_secrets = true;
                random_hex(16)
            }
            None if !needs.admin_token => random_hex(16),
            None => {
                return Err(err("FLASHGRAB_ADMIN_TOKEN", "required (set it, or run with --dev to generate one)"));
            }
        };
        if admin_token.len() < 16 {
            return Err(err("FLASHGRAB_ADMIN_TOKEN", "must be at least 16 characters"));
        }
        let user_jwt_secret = match secret(&env, "USER_JWT_SECRET")?.or(file.user_jwt_secret) {
            Some(t) => t,
            None if dev => {
                generated_secrets = true;
                random_hex(32)
            }
            None if !needs.user_jwt_secret => random_hex(32),
            None => {
                return Err(err("FLASHGRAB_USER_JWT_SECRET", "required (set it, or run with --dev to generate one)"));
            }
        };
        if user_jwt_secret.len() < 32 {
            return Err(err("FLASHGRAB_USER_JWT_SECRET", "must be at least 32 bytes"));
        }
        let user_jwt_secret_previous = secret(&env, "USER_JWT_SECRET_PREVIOUS")?;
        if user_jwt_secret_previous.as_ref().is_some_and(|p| p.len() < 32) {
            return Err(err("FLASHGRAB_USER_JWT_SECRET_PREVIOUS", "must be at least 32 bytes"));
        }
        let jwt_leeway_secs = num("JWT_LEEWAY_SECS", None, 30)?;
        if jwt_leeway_secs > 600 {
            return Err(err("FLASHGRAB_JWT_LEEWAY_SECS", "must be between 0 and 600"));
        }
        let front_defaults = FrontSettings::default();
        let header_read_ms =
            num("HEADER_READ_TIMEOUT_MS", None, front_defaults.header_read_timeout.as_millis() as u64)?;
        let idle_ms = num("IDLE_TIMEOUT_MS", None, front_defaults.idle_timeout.as_millis() as u64)?;
        let max_connections = num("MAX_CONNECTIONS", None, front_defaults.max_connections as u64)?;
        for (name, v, lo, hi) in [
            ("FLASHGRAB_HEADER_READ_TIMEOUT_MS", header_read_ms, 100, 600_000),
            ("FLASHGRAB_IDLE_TIMEOUT_MS", idle_ms, 100, 3_600_000),
            ("FLASHGRAB_MAX_CONNECTIONS", max_connections, 1, 10_000_000),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(err(name, format!("must be between {lo} and {hi}")));
            }
        }
        let front = FrontSettings {
            header_read_timeout: Duration::from_millis(header_read_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            max_connections: max_connections as usize,
        };

        let key_prefix = pick("KEY_PREFIX", file.key_prefix, Some(DEFAULT_KEY_PREFIX)).unwrap_or_default();
        let prefix_ok = (1..=32).contains(&key_prefix.len())
            && key_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !prefix_ok {
            return Err(err("FLASHGRAB_KEY_PREFIX", "must be 1..=32 characters of A-Z a-z 0-9 _ -"));
        }

        let redis_timeout_ms = num("REDIS_TIMEOUT_MS", file.redis_timeout_ms, 1000)?;
        let mysql_timeout_ms = num("MYSQL_TIMEOUT_MS", file.mysql_timeout_ms, 5000)?;
        let campaign_cache_ms = num("CAMPAIGN_CACHE_MS", file.campaign_cache_ms, 1000)?;
        let relay_reclaim_ms = num("RELAY_RECLAIM_MS", file.relay_reclaim_ms, 15_000)?;
        let mysql_max_connections = num("MYSQL_MAX_CONNECTIONS", file.mysql_max_connections.map(u64::from), 16)?;
        for (name, v, lo, hi) in [
            ("FLASHGRAB_REDIS_TIMEOUT_MS", redis_timeout_ms, 10, 60_000),
            ("FLASHGRAB_MYSQL_TIMEOUT_MS", mysql_timeout_ms, 10, 300_000),
            ("FLASHGRAB_CAMPAIGN_CACHE_MS", campaign_cache_ms, 0, 3_600_000),
            ("FLASHGRAB_RELAY_RECLAIM_MS", relay_reclaim_ms, 100, 3_600_000),
            ("FLASHGRAB_MYSQL_MAX_CONNECTIONS", mysql_max_connections, 1, 1000),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(err(name, format!("must be between {lo} and {hi}")));
            }
        }
        let amqp_timeout_ms = num("AMQP_TIMEOUT_MS", file.amqp_timeout_ms, 5000)?;
        let defaults = ProtectSettings::default();
        let rate = |name: &str, per_sec: Option<u64>, burst: Option<u64>, default: Option<Rate>| {
            let d = default.unwrap_or(Rate { per_sec: 0, burst: 0 });
            let per_sec = num(&format!("{name}_RATE"), per_sec, u64::from(d.per_sec))?;
            let burst = num(&format!("{name}_BURST"), burst, u64::from(d.burst).max(1))?;
            if per_sec > 10_000_000 {
                return Err(err(&format!("FLASHGRAB_{name}_RATE"), "must be between 0 (off) and 10000000"));
            }
            if !(1..=10_000_000).contains(&burst) {
                return Err(err(&format!("FLASHGRAB_{name}_BURST"), "must be between 1 and 10000000"));
            }
            Ok((per_sec > 0).then_some(Rate { per_sec: per_sec as u32, burst: burst as u32 }))
        };
        let user_rate = rate("USER", file.user_rate, file.user_burst, defaults.user_rate)?;
        let ip_rate = rate("IP", file.ip_rate, file.ip_burst, defaults.ip_rate)?;
        let claim_rate = rate("CLAIM", file.claim_rate, file.claim_burst, defaults.claim_rate)?;
        let rate_max_keys = num("RATE_MAX_KEYS", file.rate_max_keys, defaults.rate_max_keys as u64)?;
        let max_in_flight = num("MAX_IN_FLIGHT", file.max_in_flight, defaults.max_in_flight as u64)?;
        let breaker_failures = num("BREAKER_FAILURES", file.breaker_failures, u64::from(defaults.breaker_failures))?;
        let breaker_open_ms = num("BREAKER_OPEN_MS", file.breaker_open_ms, defaults.breaker_open.as_millis() as u64)?;
        for (name, v, lo, hi) in [
            ("FLASHGRAB_AMQP_TIMEOUT_MS", amqp_timeout_ms, 10, 300_000),
            ("FLASHGRAB_RATE_MAX_KEYS", rate_max_keys, 1000, 100_000_000),
            ("FLASHGRAB_MAX_IN_FLIGHT", max_in_flight, 1, 1_000_000),
            ("FLASHGRAB_BREAKER_FAILURES", breaker_failures, 1, 1_000_000),
            ("FLASHGRAB_BREAKER_OPEN_MS", breaker_open_ms, 10, 600_000),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(err(name, format!("must be between {lo} and {hi}")));
            }
        }
        let trusted_proxy_header = match pick("TRUSTED_PROXY_HEADER", file.trusted_proxy_header, None)
            .map(|h| h.trim().to_ascii_lowercase())
        {
            None => None,
            Some(h) if axum::http::HeaderName::from_bytes(h.as_bytes()).is_ok() => Some(h),
            Some(_) => {
                return Err(err("FLASHGRAB_TRUSTED_PROXY_HEADER", "must be a header name, e.g. x-forwarded-for"));
            }
        };
        let protect = ProtectSettings {
            user_rate,
            ip_rate,
            claim_rate,
            rate_max_keys: rate_max_keys as usize,
            trusted_proxy_header,
            max_in_flight: max_in_flight as usize,
            breaker_failures: breaker_failures as u32,
            breaker_open: Duration::from_millis(breaker_open_ms),
        };

        let replica_wait_ms = num("REPLICA_WAIT_MS", file.replica_wait_ms, 50)?;
        let shutdown_timeout_ms = num("SHUTDOWN_TIMEOUT_MS", file.shutdown_timeout_ms, 20_000)?;
        let claim_batch = num("CLAIM_BATCH", file.claim_batch, crate::stock::DEFAULT_CLAIM_BATCH as u64)?;
        for (name, v, lo, hi) in [
            ("FLASHGRAB_REPLICA_WAIT_MS", replica_wait_ms, 1, 10_000),
            ("FLASHGRAB_CLAIM_BATCH", claim_batch, 1, 256),
            ("FLASHGRAB_SHUTDOWN_TIMEOUT_MS", shutdown_timeout_ms, 100, 600_000),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(err(name, format!("must be between {lo} and {hi}")));
            }
        }
        let durability = match pick("DURABILITY", file.durability, Some("fast")).as_deref() {
            Some("fast") => crate::stock::Durability::Fast,
            Some("replicated") => {
                // The WAIT rides on the claim's Redis connection and is bounded
                // by the Redis timeout like every call.
                if replica_wait_ms >= redis_timeout_ms {
                    return Err(err(
                        "FLASHGRAB_REPLICA_WAIT_MS",
                        format!("must be below FLASHGRAB_REDIS_TIMEOUT_MS ({redis_timeout_ms})"),
                    ));
                }
                crate::stock::Durability::Replicated { wait: Duration::from_millis(replica_wait_ms) }
            }
            _ => return Err(err("FLASHGRAB_DURABILITY", "must be fast or replicated")),
        };
        let archive_after_secs = num("ARCHIVE_AFTER_SECS", file.archive_after_secs, 86_400)?;
        if archive_after_secs > 365 * 86_400 {
            return Err(err("FLASHGRAB_ARCHIVE_AFTER_SECS", "must be between 0 (off) and 31536000 (a year)"));
        }
        let log_format = match pick("LOG_FORMAT", file.log_format, Some("text")).as_deref() {
            Some("json") => crate::telemetry::LogFormat::Json,
            Some("text") => crate::telemetry::LogFormat::Text,
            _ => return Err(err("FLASHGRAB_LOG_FORMAT", "must be text or json")),
        };

        Ok(Self {
            listen,
            redis_nodes,
            amqp_url,
            mysql_url,
            redis_ca,
            amqp_ca,
            mysql_ca_file,
            admin_token,
            user_jwt_secret,
            user_jwt_secret_previous,
            jwt_leeway: Duration::from_secs(jwt_leeway_secs),
            front,
            key_prefix,
            redis_timeout: Duration::from_millis(redis_timeout_ms),
            mysql_timeout: Duration::from_millis(mysql_timeout_ms),
            mysql_max_connections: mysql_max_connections as u32,
            campaign_cache_ttl: Duration::from_millis(campaign_cache_ms),
            relay_reclaim_idle: Duration::from_millis(relay_reclaim_ms),
            durability,
            claim_batch: claim_batch as usize,
            shutdown_timeout: Duration::from_millis(shutdown_timeout_ms),
            log_format,
            generated_secrets,
            run_relay: true,
            run_persist: true,
            amqp_timeout: Duration::from_millis(amqp_timeout_ms),
            protect,
            archive_after: (archive_after_secs > 0).then(|| Duration::from_secs(archive_after_secs)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    const SECRETS: [(&str, &str); 2] = [
        ("FLASHGRAB_ADMIN_TOKEN", "admin-token-0123456789"),
        ("FLASHGRAB_USER_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ];

    #[test]
    fn commands_need_only_the_secrets_they_use() {
        let s = Settings::load_for(None, env(&[]), false, Needs::NONE).unwrap();
        assert!(!s.generated_secrets && s.admin_token.len() >= 16 && s.user_jwt_secret.len() >= 32);
        let e = Settings::load_for(None, env(&[]), false, Needs::JWT).unwrap_err();
        assert_eq!(e.setting, "FLASHGRAB_USER_JWT_SECRET");
        let jwt = [SECRETS[1]];
        let s = Settings::load_for(None, env(&jwt), false, Needs::JWT).unwrap();
        assert_eq!(s.user_jwt_secret, SECRETS[1].1);
        // A value given is still checked, needed or not.
        let short = [("FLASHGRAB_ADMIN_TOKEN", "short")];
        assert_eq!(
            Settings::load_for(None, env(&short), false, Needs::NONE).unwrap_err().setting,
            "FLASHGRAB_ADMIN_TOKEN"
        );
    }

    #[test]
    fn defaults_need_secrets_outside_dev() {
        let e = Settings::load(None, env(&[]), false).unwrap_err();
        assert_eq!(e.setting, "FLASHGRAB_ADMIN_TOKEN");
        let s = Settings::load(None, env(&[]), true).unwrap();
        assert!(s.generated_secrets);
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.redis_nodes.len(), 3);
    }

    #[test]
    fn archive_after_defaults_to_a_day_and_zero_turns_it_off() {
        let s = Settings::load(None, env(&SECRETS), false).unwrap();
        assert_eq!(s.archive_after, Some(Duration::from_secs(86_400)));
        let mut pairs = SECRETS.to_vec();
        pairs.push(("FLASHGRAB_ARCHIVE_AFTER_SECS", "0"));
        assert_eq!(Settings::load(None, env(&pairs), false).unwrap().archive_after, None);
        pairs.pop();
        pairs.push(("FLASHGRAB_ARCHIVE_AFTER_SECS", "99999999"));
        assert_eq!(Settings::load(None, env(&pairs), false).unwrap_err().setting, "FLASHGRAB_ARCHIVE_AFTER_SECS");
    }

    #[test]
    fn env_beats_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("fg-config-{}", ulid::Ulid::new()));
        std::fs::write(&dir, "listen = \"127.0.0.1:9000\"\nkey_prefix = \"fromfile\"\n").unwrap();
        let mut pairs = SECRETS.to_vec();
        pairs.push(("FLASHGRAB_KEY_PREFIX", "fromenv"));
        let s = Settings::load(Some(&dir), env(&pairs), false).unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.key_prefix, "fromenv");
        std::fs::write(&dir, "lisen = \"x\"\n").unwrap();
        assert_eq!(Settings::load(Some(&dir), env(&pairs), false).unwrap_err().setting, "--config");
        std::fs::remove_file(&dir).ok();
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (k, v) in [
            ("FLASHGRAB_LISTEN", "nope"),
            ("FLASHGRAB_REDIS_NODES", "http://x"),
            ("FLASHGRAB_AMQP_URL", "http://x"),
            ("FLASHGRAB_MYSQL_URL", "postgres://x/y"),
            ("FLASHGRAB_KEY_PREFIX", "{bad}"),
            ("FLASHGRAB_ADMIN_TOKEN", "short"),
            ("FLASHGRAB_REDIS_TIMEOUT_MS", "abc"),
            ("FLASHGRAB_LOG_FORMAT", "xml"),
            ("FLASHGRAB_DURABILITY", "sync"),
            ("FLASHGRAB_REPLICA_WAIT_MS", "0"),
            ("FLASHGRAB_SHUTDOWN_TIMEOUT_MS", "x"),
            ("FLASHGRAB_USER_RATE", "-1"),
            ("FLASHGRAB_IP_BURST", "0"),
            ("FLASHGRAB_MAX_IN_FLIGHT", "0"),
            ("FLASHGRAB_BREAKER_OPEN_MS", "1"),
            ("FLASHGRAB_TRUSTED_PROXY_HEADER", "bad header"),
        ] {
            let mut pairs = SECRETS.to_vec();
            pairs.push((k, v));
            assert_eq!(Settings::load(None, env(&pairs), false).unwrap_err().setting, k, "{k}={v}");
        }
    }

    #[test]
    fn protection_defaults_and_switches() {
        let s = Settings::load(None, env(&SECRETS), false).unwrap();
        assert_eq!(s.protect, ProtectSettings::default());
        let mut pairs = SECRETS.to_vec();
        pairs.extend([
            ("FLASHGRAB_IP_RATE", "0"),
            ("FLASHGRAB_USER_RATE", "3"),
            ("FLASHGRAB_USER_BURST", "4"),
            ("FLASHGRAB_TRUSTED_PROXY_HEADER", "X-Forwarded-For"),
        ]);
        let s = Settings::load(None, env(&pairs), false).unwrap();
        assert_eq!(s.protect.ip_rate, None);
        assert_eq!(s.protect.user_rate, Some(Rate { per_sec: 3, burst: 4 }));
        assert_eq!(s.protect.trusted_proxy_header.as_deref(), Some("x-forwarded-for"));
    }

    #[test]
    fn durability_modes() {
        let s = Settings::load(None, env(&SECRETS), false).unwrap();
        assert_eq!(s.durability, crate::stock::Durability::Fast);
        let mut pairs = SECRETS.to_vec();
        pairs.extend([("FLASHGRAB_DURABILITY", "replicated"), ("FLASHGRAB_REPLICA_WAIT_MS", "75")]);
        let s = Settings::load(None, env(&pairs), false).unwrap();
        assert_eq!(s.durability, crate::stock::Durability::Replicated { wait: Duration::from_millis(75) });
        // The wait must fit in the Redis timeout.
        pairs.push(("FLASHGRAB_REDIS_TIMEOUT_MS", "75"));
        assert_eq!(Settings::load(None, env(&pairs), false).unwrap_err().setting, "FLASHGRAB_REPLICA_WAIT_MS");
    }

    #[test]
    fn secrets_come_from_files_and_never_show_in_debug() {
        let dir = std::env::temp_dir().join(format!("fg-secrets-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_string_lossy().into_owned()
        };
        let (admin, jwt, prev) =
            (f("admin", "admin-from-file-0123456789\n"), f("jwt", &"j".repeat(40)), f("prev", &"p".repeat(32)));
        let (rpw, apw, mpw) = (f("r", "redis-pw-X1\n"), f("a", "amqp/pw@Y2"), f("m", "mysql-pw-Z3\r\n"));
        let pairs = [
            ("FLASHGRAB_ADMIN_TOKEN_FILE", admin.as_str()),
            ("FLASHGRAB_USER_JWT_SECRET_FILE", jwt.as_str()),
            ("FLASHGRAB_USER_JWT_SECRET_PREVIOUS_FILE", prev.as_str()),
            ("FLASHGRAB_REDIS_NODES", "redis://fg@127.0.0.1:7000,redis://fg@127.0.0.1:7001"),
            ("FLASHGRAB_REDIS_PASSWORD_FILE", rpw.as_str()),
            ("FLASHGRAB_AMQP_URL", "amqp://fg@127.0.0.1:5672/%2f"),
            ("FLASHGRAB_AMQP_PASSWORD_FILE", apw.as_str()),
            ("FLASHGRAB_MYSQL_URL", "mysql://fg@127.0.0.1:3306/flashgrab"),
            ("FLASHGRAB_MYSQL_PASSWORD_FILE", mpw.as_str()),
        ];
        let s = Settings::load(None, env(&pairs), false).unwrap();
        assert_eq!(s.admin_token, "admin-from-file-0123456789");
        assert_eq!(s.user_jwt_secret, "j".repeat(40));
        assert_eq!(s.user_jwt_secret_previous.as_deref(), Some("p".repeat(32).as_str()));
        assert_eq!(s.redis_nodes[1], "redis://fg:redis-pw-X1@127.0.0.1:7001");
        assert_eq!(s.amqp_url, "amqp://fg:amqp%2Fpw%40Y2@127.0.0.1:5672/%2f");
        assert_eq!(s.mysql_url, "mysql://fg:mysql-pw-Z3@127.0.0.1:3306/flashgrab");
        let shown = format!("{s:?}");
        for secret in ["admin-from-file", "jjjj", "pppp", "redis-pw", "amqp%2Fpw", "mysql-pw"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // Both forms at once, an unreadable file, an empty one: named.
        let mut both = pairs.to_vec();
        both.push(("FLASHGRAB_ADMIN_TOKEN", "admin-direct-0123456789"));
        assert_eq!(Settings::load(None, env(&both), false).unwrap_err().setting, "FLASHGRAB_ADMIN_TOKEN_FILE");
        let missing = [("FLASHGRAB_USER_JWT_SECRET_FILE", "/nonexistent/jwt")];
        assert_eq!(Settings::load(None, env(&missing), true).unwrap_err().setting, "FLASHGRAB_USER_JWT_SECRET_FILE");
        let empty = f("empty", "\n");
        let e = [("FLASHGRAB_MYSQL_PASSWORD_FILE", empty.as_str())];
        assert_eq!(Settings::load(None, env(&e), true).unwrap_err().setting, "FLASHGRAB_MYSQL_PASSWORD_FILE");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn ca_files_per_backend_or_shared() {
        let dir = std::env::temp_dir().join(format!("fg-ca-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let ca = ca.to_string_lossy().into_owned();
        let mut pairs = SECRETS.to_vec();
        pairs.push(("FLASHGRAB_TLS_CA_FILE", ca.as_str()));
        let s = Settings::load(None, env(&pairs), false).unwrap();
        assert!(s.redis_ca.is_some() && s.amqp_ca.is_some());
        assert_eq!(s.mysql_ca_file.as_deref(), Some(Path::new(&ca)));
        let not_pem = dir.join("x.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let np = not_pem.to_string_lossy().into_owned();
        pairs.push(("FLASHGRAB_AMQP_CA_FILE", np.as_str()));
        assert_eq!(Settings::load(None, env(&pairs), false).unwrap_err().setting, "FLASHGRAB_AMQP_CA_FILE");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn front_door_and_leeway_defaults() {
        let s = Settings::load(None, env(&SECRETS), false).unwrap();
        assert_eq!(s.front, FrontSettings::default());
        assert_eq!(s.jwt_leeway, Duration::from_secs(30));
        for k in ["FLASHGRAB_MAX_CONNECTIONS", "FLASHGRAB_HEADER_READ_TIMEOUT_MS", "FLASHGRAB_JWT_LEEWAY_SECS"] {
            let mut pairs = SECRETS.to_vec();
            pairs.push((k, "99999999999"));
            assert_eq!(Settings::load(None, env(&pairs), false).unwrap_err().setting, k);
        }
    }
}
