//! Where the three backends are and how to trust them: the URLs (with the
//! password put in from `FLASHGRAB_*_PASSWORD[_FILE]`), and for TLS the
//! private CA (`FLASHGRAB_*_CA_FILE`, PEM) beside the system roots.
//!
//! TLS is rustls with ring everywhere (the `tls` cargo feature, on by
//! default): `rediss://` for the Redis Cluster (the nodes it discovers are
//! reached over TLS too), `amqps://` for RabbitMQ, and for MySQL the URL's
//! `ssl-mode` or, when a CA file is given, `VERIFY_IDENTITY` against it. A
//! build without the feature refuses those schemes when the configuration
//! is loaded, naming the setting, instead of failing at the first connect.
//!
//! Failure modes: a certificate the CA does not vouch for fails the
//! connect; the errors say which backend (`StartupError`, `QueueError`,
//! `DbError` each name theirs). The targets' `Debug` never shows a password.

use std::path::PathBuf;
use std::sync::Arc;

/// Whether this build can speak TLS to the backends.
pub const TLS_COMPILED: bool = cfg!(feature = "tls");

/// The Redis Cluster's seed nodes and the CA to trust for `rediss://`.
#[derive(Clone, Default)]
pub struct RedisTarget {
    /// `redis://` or `rediss://` URLs, password included.
    pub nodes: Vec<String>,
    /// PEM bundle of a private CA; `None`: the system roots.
    pub ca_pem: Option<Arc<Vec<u8>>>,
}

impl RedisTarget {
    pub fn plain(nodes: &[String]) -> Self {
        Self { nodes: nodes.to_vec(), ca_pem: None }
    }

    /// A cluster client with the timeouts of every caller (the claim path,
    /// the relay, the tools).
    pub fn cluster_builder(&self) -> redis::cluster::ClusterClientBuilder {
        let b = redis::cluster::ClusterClientBuilder::new(self.nodes.clone());
        #[cfg(feature = "tls")]
        let b = match &self.ca_pem {
            Some(ca) => b.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(ca.as_ref().clone()) }),
            None => b,
        };
        b
    }

    /// A single-node client (pub/sub of the notices) for `node`.
    pub fn node_client(&self, node: &str) -> redis::RedisResult<redis::Client> {
        #[cfg(feature = "tls")]
        if let Some(ca) = &self.ca_pem {
            return redis::Client::build_with_tls(
                node,
                redis::TlsCertificates { client_tls: None, root_cert: Some(ca.as_ref().clone()) },
            );
        }
        redis::Client::open(node)
    }
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("nodes", &self.nodes.iter().map(|n| redact(n)).collect::<Vec<_>>())
            .field("private_ca", &self.ca_pem.is_some())
            .finish()
    }
}

/// The broker's URL and the CA to trust for `amqps://`.
#[derive(Clone)]
pub struct AmqpTarget {
    /// `amqp://` or `amqps://`, password included.
    pub url: String,
    /// PEM bundle of a private CA; `None`: the system roots.
    pub ca_pem: Option<Arc<str>>,
}

impl From<String> for AmqpTarget {
    fn from(url: String) -> Self {
        Self { url, ca_pem: None }
    }
}

impl From<&String> for AmqpTarget {
    fn from(url: &String) -> Self {
        Self { url: url.clone(), ca_pem: None }
    }
}

impl From<&AmqpTarget> for AmqpTarget {
    fn from(t: &AmqpTarget) -> Self {
        t.clone()
    }
}

impl From<&str> for AmqpTarget {
    fn from(url: &str) -> Self {
        Self { url: url.to_owned(), ca_pem: None }
    }
}

impl AmqpTarget {
    /// Opens a connection (TLS with the private CA when one is set).
    pub async fn connect(&self) -> Result<lapin::Connection, lapin::Error> {
        let props = lapin::ConnectionProperties::default();
        match &self.ca_pem {
            None => lapin::Connection::connect(&self.url, props).await,
            Some(ca) => {
                let tls = lapin::tcp::OwnedTLSConfig { identity: None, cert_chain: Some(ca.to_string()) };
                lapin::Connection::connect_with_config(&self.url, props, tls, lapin::runtime::default_runtime()?).await
            }
        }
    }
}

/// True when `e` (or an error it wraps) is the TLS handshake refusing the
/// peer's certificate: a configuration problem (wrong CA, wrong host name)
/// that no retry fixes, unlike a broker that is down or restarting.
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        #[cfg(feature = "tls")]
        {
            let inner = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
            let tls = inner.and_then(|i| i.downcast_ref::<rustls::Error>()).or_else(|| err.downcast_ref());
            if matches!(tls, Some(rustls::Error::InvalidCertificate(_))) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

impl std::fmt::Debug for AmqpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTarget")
            .field("url", &redact(&self.url))
            .field("private_ca", &self.ca_pem.is_some())
            .finish()
    }
}

/// The MySQL URL and the CA to verify the server against.
#[derive(Clone)]
pub struct MysqlTarget {
    /// `mysql://user:password@host:port/database[?ssl-mode=...]`.
    pub url: String,
    /// A private CA (PEM file): TLS is then required and the server's
    /// certificate and name are verified against it.
    pub ca_file: Option<PathBuf>,
}

impl From<&str> for MysqlTarget {
    fn from(url: &str) -> Self {
        Self { url: url.to_owned(), ca_file: None }
    }
}

impl std::fmt::Debug for MysqlTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlTarget").field("url", &redact(&self.url)).field("ca_file", &self.ca_file).finish()
    }
}

/// Hides the password of a URL for logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_owned(),
        // Not a URL: show only the scheme, in case it holds a secret.
        Err(_) => url.split_once("://").map_or_else(|| "<not a URL>".to_owned(), |(s, _)| format!("{s}://…")),
    }
}

/// `url` with its password replaced by `password` (percent-encoded).
pub fn with_password(url: &str, password: &str) -> Result<String, String> {
    let mut u = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if u.username().is_empty() {
        return Err("the URL names no user to give the password to (e.g. scheme://user@host:port)".into());
    }
    u.set_password(Some(password)).map_err(|()| "this URL cannot carry a password".to_owned())?;
    Ok(u.to_string())
}

/// Checks the scheme of a backend URL: `plain` always, `tls` only when
/// compiled in (`tls_compiled`, a parameter so the refusal is testable in
/// a build that has TLS).
pub fn check_scheme(url: &str, plain: &str, tls: &str, tls_compiled: bool) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if scheme == plain || (scheme == tls && tls_compiled) {
        Ok(())
    } else if scheme == tls {
        Err(format!(
            "{tls}:// (TLS) is not compiled into this build (built without the `tls` cargo feature): \
             rebuild with default features, or use {plain}://"
        ))
    } else {
        Err(format!("{:?} is not a {plain}:// or {tls}:// URL", redact(url)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_go_in_encoded_and_never_come_out() {
        let u = with_password("rediss://flashgrab@127.0.0.1:7100", "p@ss:w/rd").unwrap();
        assert_eq!(u, "rediss://flashgrab:p%40ss%3Aw%2Frd@127.0.0.1:7100");
        assert_eq!(redact(&u), "rediss://flashgrab:***@127.0.0.1:7100");
        assert!(with_password("redis://127.0.0.1:7000", "x").is_err());
        let amqp = with_password("amqps://u@h:5671/%2f", "s3cret").unwrap();
        assert_eq!(amqp, "amqps://u:s3cret@h:5671/%2f");
        let t = AmqpTarget::from(amqp.as_str());
        assert!(!format!("{t:?}").contains("s3cret"));
        let r = RedisTarget::plain(&[u]);
        assert!(!format!("{r:?}").contains("p%40ss"));
        assert_eq!(redact("mysql://root@h/db"), "mysql://root@h/db");
    }

    #[test]
    fn a_tls_scheme_not_compiled_in_is_refused_by_name() {
        assert!(check_scheme("rediss://h:1", "redis", "rediss", true).is_ok());
        let e = check_scheme("rediss://h:1", "redis", "rediss", false).unwrap_err();
        assert!(e.contains("rediss:// (TLS) is not compiled into this build"), "{e}");
        let e = check_scheme("amqps://h", "amqp", "amqps", false).unwrap_err();
        assert!(e.contains("`tls` cargo feature"), "{e}");
        assert!(check_scheme("redis+unix:///tmp/s", "redis", "rediss", true).is_err());
        assert!(check_scheme("amqp://h", "amqp", "amqps", false).is_ok());
    }
}
