//! Managed-style backends: TLS and passwords on all three, against the TLS
//! variant of the local stack (`scripts/stack tls-up`, which writes the
//! FLASHGRAB_TEST_TLS_* variables to `<state>/tls/env`; point
//! FLASHGRAB_TEST_TLS_ENV at that file, as scripts/test does). Without it the
//! TLS tests say so and pass; the scheme test needs no server.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use flashgrab::config::Settings;
use flashgrab::startup::Application;
use serde_json::{Value, json};

use support::app::{ADMIN, SECRET, TestApp, campaign_body, fresh_names};
use support::wait::wait_for;

/// The TLS stack's variables, from the env file or the environment.
fn tls_env() -> Option<HashMap<String, String>> {
    let mut vars = HashMap::new();
    if let Ok(path) = std::env::var("FLASHGRAB_TEST_TLS_ENV") {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("FLASHGRAB_TEST_TLS_ENV={path}: {e}"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = line.split_once('=') {
                vars.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    for (k, v) in
        std::env::vars().filter(|(k, _)| k.starts_with("FLASHGRAB_TEST_TLS_") && k != "FLASHGRAB_TEST_TLS_ENV")
    {
        vars.insert(k, v);
    }
    if vars.contains_key("FLASHGRAB_TEST_TLS_REDIS_NODES") {
        Some(vars)
    } else {
        eprintln!("TLS stack not configured (run scripts/stack tls-up, set FLASHGRAB_TEST_TLS_ENV): skipped");
        None
    }
}

/// The service's environment for the TLS stack: URLs without passwords,
/// passwords and secrets from files, one CA for all three backends.
fn service_env(t: &HashMap<String, String>, prefix: &str, db: &str) -> HashMap<String, String> {
    let dir = std::env::temp_dir().join(format!("fg-tls-secrets-{prefix}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, value: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p.to_string_lossy().into_owned()
    };
    let v = |k: &str| t.get(k).unwrap_or_else(|| panic!("{k} missing from the TLS stack's env")).clone();
    HashMap::from([
        ("FLASHGRAB_LISTEN".into(), "127.0.0.1:0".into()),
        ("FLASHGRAB_REDIS_NODES".into(), v("FLASHGRAB_TEST_TLS_REDIS_NODES")),
        ("FLASHGRAB_REDIS_PASSWORD_FILE".into(), v("FLASHGRAB_TEST_TLS_REDIS_PASSWORD_FILE")),
        ("FLASHGRAB_AMQP_URL".into(), v("FLASHGRAB_TEST_TLS_AMQP_URL")),
        ("FLASHGRAB_AMQP_PASSWORD_FILE".into(), v("FLASHGRAB_TEST_TLS_AMQP_PASSWORD_FILE")),
        ("FLASHGRAB_MYSQL_URL".into(), format!("{}/{db}", v("FLASHGRAB_TEST_TLS_MYSQL_URL"))),
        ("FLASHGRAB_MYSQL_PASSWORD_FILE".into(), v("FLASHGRAB_TEST_TLS_MYSQL_PASSWORD_FILE")),
        ("FLASHGRAB_TLS_CA_FILE".into(), v("FLASHGRAB_TEST_TLS_CA_FILE")),
        ("FLASHGRAB_ADMIN_TOKEN_FILE".into(), file("admin", ADMIN)),
        ("FLASHGRAB_USER_JWT_SECRET_FILE".into(), file("jwt", SECRET)),
        ("FLASHGRAB_KEY_PREFIX".into(), prefix.into()),
        ("FLASHGRAB_REDIS_TIMEOUT_MS".into(), "3000".into()),
        ("FLASHGRAB_MYSQL_MAX_CONNECTIONS".into(), "4".into()),
        ("FLASHGRAB_IP_RATE".into(), "0".into()),
        ("FLASHGRAB_USER_RATE".into(), "0".into()),
    ])
}

fn load(vars: &HashMap<String, String>) -> Settings {
    Settings::load(None, |k| vars.get(k).cloned(), false).expect("TLS test settings are valid")
}

#[tokio::test]
async fn claims_reach_mysql_over_tls_with_passwords_on_all_three() {
    let Some(t) = tls_env() else { return };
    // The TLS stack's settings, the pipeline running; the database and the
    // queues are deleted (over TLS) when the app is dropped.
    let app = TestApp::builder()
        .base_settings(move |prefix, db| {
            let settings = load(&service_env(&t, prefix, db));
            assert!(settings.redis_nodes.iter().all(|n| n.starts_with("rediss://flashgrab:")));
            assert!(settings.amqp_url.starts_with("amqps://flashgrab:"));
            settings
        })
        .pipeline()
        .start()
        .await;

    let ready: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready, json!({"redis": "ok", "rabbitmq": "ok", "mysql": "ok"}));

    let mut body = campaign_body(3);
    body["name"] = json!("tls drop");
    let id = app.create_campaign(body).await["id"].as_str().unwrap().to_owned();
    let mut statuses = Vec::new();
    for user in ["u1", "u2", "u3", "u4"] {
        statuses.push(app.claim(&id, user).await.0.as_u16());
    }
    assert_eq!(statuses, [201, 201, 201, 410], "three coupons, then sold out (410)");

    // Through the outbox (Redis over TLS), the broker (AMQPS) and the
    // worker into MySQL (TLS): all three rows arrive.
    let count = || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM coupons WHERE campaign_id = ?")
            .bind(&id)
            .fetch_one(app.state.db.pool())
            .await
            .unwrap();
        n
    };
    let persisted = wait_for(Duration::from_secs(30), "claims persisted to MySQL over TLS", || async {
        let n = count().await;
        if n == 3 { Ok(n) } else { Err(format!("{n} rows")) }
    })
    .await;
    assert_eq!(persisted, 3, "claims persisted to MySQL over TLS");
    let tls: (String, String) =
        sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_version'").fetch_one(app.state.db.pool()).await.unwrap();
    assert!(tls.1.starts_with("TLSv1."), "the MySQL session is TLS: {tls:?}");
}

#[tokio::test]
async fn a_wrong_ca_fails_with_an_error_naming_the_backend() {
    let Some(t) = tls_env() else { return };
    let wrong = t["FLASHGRAB_TEST_TLS_WRONG_CA_FILE"].clone();
    for (setting, named) in [
        ("FLASHGRAB_MYSQL_CA_FILE", "MySQL"),
        ("FLASHGRAB_REDIS_CA_FILE", "Redis Cluster"),
        ("FLASHGRAB_AMQP_CA_FILE", "RabbitMQ"),
    ] {
        let (prefix, db) = fresh_names();
        let mut vars = service_env(&t, &prefix, &db);
        vars.insert(setting.into(), wrong.clone());
        let e = match Application::build(&load(&vars)).await {
            Ok(_) => panic!("{setting} = a CA that signed nothing: the start must fail"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(named), "{setting}: {e:?} does not name {named}");
        assert!(e.contains("certificate"), "{setting}: {e:?} does not say it is the certificate");
        eprintln!("{setting} = wrong CA: {e}");
    }
}

#[test]
fn a_scheme_that_is_not_supported_is_refused_at_start() {
    for (setting, value, says) in [
        ("FLASHGRAB_REDIS_NODES", "redis+unix:///run/redis.sock", "is not a redis:// or rediss:// URL"),
        ("FLASHGRAB_AMQP_URL", "amqp+ws://127.0.0.1:15674/ws", "is not a amqp:// or amqps:// URL"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashgrab"))
            .args(["serve", "--dev"])
            .env(setting, value)
            .env("FLASHGRAB_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{setting}={value} started");
        assert!(stderr.contains(setting) && stderr.contains(says), "{setting}={value}: {stderr}");
    }
}
