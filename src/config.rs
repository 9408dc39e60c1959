//! Configuration: compiled-in defaults < `--config` TOML file < `FLASHGRAB_*`
//! environment variables, validated once at start. A bad setting stops the
//! process before anything starts, with an error naming the setting (by its
//! environment name, which is also how the file's keys are spelt, lowercased
//! and without the prefix).

use std::net::SocketAddr;
use std::path::Path;
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
    pub admin_token: String,
    pub user_jwt_secret: String,
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
    /// `text` or `json` logs.
    pub log_format: LogFormat,
    /// True when the secrets were generated (dev mode): print them.
    pub generated_secrets: bool,
    /// Run the outbox relay inside `serve` (on by default; off in tests that
    /// only exercise the API).
    pub run_relay: bool,
    /// Run the persist worker inside `serve` (`--no-persist` turns it off).
    pub run_persist: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("redis_nodes", &self.redis_nodes)
            .field("amqp_url", &redact(&self.amqp_url))
            .field("mysql_url", &redact(&self.mysql_url))
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// Hides the password of a URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
}

/// Random hex string of `bytes` random bytes.
fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

impl Settings {
    /// Loads the layers. `env` looks up an environment variable (passed in so
    /// tests need no process-global state); `dev` allows generated secrets.
    pub fn load(
        config_file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        dev: bool,
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
        for n in &redis_nodes {
            if !(n.starts_with("redis://") || n.starts_with("rediss://")) {
                return Err(err("FLASHGRAB_REDIS_NODES", format!("{n:?} is not a redis:// URL")));
            }
        }

        let amqp_url = pick("AMQP_URL", file.amqp_url, Some(DEFAULT_AMQP_URL)).unwrap_or_default();
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return Err(err("FLASHGRAB_AMQP_URL", "must be an amqp:// URL"));
        }
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

        let mut generated_secrets = false;
        let admin_token = match pick("ADMIN_TOKEN", file.admin_token, None) {
            Some(t) => t,
            None if dev => {
                generated_secrets = true;
                random_hex(16)
            }
            None => {
                return Err(err("FLASHGRAB_ADMIN_TOKEN", "required (set it, or run with --dev to generate one)"));
            }
        };
        if admin_token.len() < 16 {
            return Err(err("FLASHGRAB_ADMIN_TOKEN", "must be at least 16 characters"));
        }
        let user_jwt_secret = match pick("USER_JWT_SECRET", file.user_jwt_secret, None) {
            Some(t) => t,
            None if dev => {
                generated_secrets = true;
                random_hex(32)
            }
            None => {
                return Err(err("FLASHGRAB_USER_JWT_SECRET", "required (set it, or run with --dev to generate one)"));
            }
        };
        if user_jwt_secret.len() < 32 {
            return Err(err("FLASHGRAB_USER_JWT_SECRET", "must be at least 32 bytes"));
        }

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
        let log_format = match pick("LOG_FORMAT", file.log_format, Some("text")).as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            _ => return Err(err("FLASHGRAB_LOG_FORMAT", "must be text or json")),
        };

        Ok(Self {
            listen,
            redis_nodes,
            amqp_url,
            mysql_url,
            admin_token,
            user_jwt_secret,
            key_prefix,
            redis_timeout: Duration::from_millis(redis_timeout_ms),
            mysql_timeout: Duration::from_millis(mysql_timeout_ms),
            mysql_max_connections: mysql_max_connections as u32,
            campaign_cache_ttl: Duration::from_millis(campaign_cache_ms),
            relay_reclaim_idle: Duration::from_millis(relay_reclaim_ms),
            log_format,
            generated_secrets,
            run_relay: true,
            run_persist: true,
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
    fn defaults_need_secrets_outside_dev() {
        let e = Settings::load(None, env(&[]), false).unwrap_err();
        assert_eq!(e.setting, "FLASHGRAB_ADMIN_TOKEN");
        let s = Settings::load(None, env(&[]), true).unwrap();
        assert!(s.generated_secrets);
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.redis_nodes.len(), 3);
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
        ] {
            let mut pairs = SECRETS.to_vec();
            pairs.push((k, v));
            assert_eq!(Settings::load(None, env(&pairs), false).unwrap_err().setting, k, "{k}={v}");
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("amqp://guest:guest@h:5672/%2f"), "amqp://guest:***@h:5672/%2f");
        assert_eq!(redact("mysql://root@h/db"), "mysql://root@h/db");
    }
}
