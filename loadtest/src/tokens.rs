//! Pre-minted user JWTs, for the drop itself and for other load generators
//! (`flashgrab-loadtest bench` feeds them to wrk). Signing is done before any load so
//! that its cost never shows in a measurement.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use flashgrab::auth::JwtKeys;

#[derive(Args)]
pub struct TokensArgs {
    /// HS256 secret the service verifies user tokens with.
    #[arg(long, env = "FLASHGRAB_USER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Number of tokens (users `<prefix>0` .. `<prefix>N-1`).
    #[arg(long)]
    count: u32,
    /// User id prefix.
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Lifetime of each token, seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    /// Output file, one token per line.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

/// The user id of user number `i`.
pub fn user_id(prefix: &str, i: u32) -> String {
    format!("{prefix}{i}")
}

/// Signs one token per user id, all expiring at `exp` (unix seconds).
pub fn mint(secret: &str, user_ids: &[String], exp: i64) -> Vec<String> {
    let keys = JwtKeys::new(secret.as_bytes());
    user_ids.iter().map(|u| keys.sign(u, exp)).collect()
}

pub fn run(a: &TokensArgs) -> anyhow::Result<()> {
    write(&a.jwt_secret, a.count, &a.user_prefix, a.ttl, &a.out)
}

/// Writes `count` tokens (users `<prefix>0..`), valid for `ttl` seconds, to
/// `out`, one per line.
pub fn write(secret: &str, count: u32, prefix: &str, ttl: i64, out: &std::path::Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let exp = chrono::Utc::now().timestamp() + ttl;
    let keys = JwtKeys::new(secret.as_bytes());
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for i in 0..count {
        writeln!(w, "{}", keys.sign(&user_id(prefix, i), exp))?;
    }
    w.flush()?;
    eprintln!(
        "wrote {} tokens ({}0..{}{}) to {} in {:.2} s",
        count,
        prefix,
        prefix,
        count.saturating_sub(1),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_as_their_user() {
        let ids = vec![user_id("u", 0), user_id("u", 1)];
        let now = chrono::Utc::now().timestamp();
        let tokens = mint("s3cret-s3cret-s3cret-s3cret-s3cret", &ids, now + 60);
        let keys = JwtKeys::new(b"s3cret-s3cret-s3cret-s3cret-s3cret");
        for (t, id) in tokens.iter().zip(&ids) {
            assert_eq!(keys.verify(t, now).unwrap().as_str(), id);
        }
    }
}
