//! `flashgrab-loadtest export`: the drop's requests in a form other load
//! generators replay, so the harness can be checked against tools no one
//! here wrote (scripts/compare-tools runs them side by side).
//!
//! A drop's request is `POST /v1/campaigns/{id}/claim` with `Authorization:
//! Bearer <JWT of one user>` and an empty body; each user claims once. The
//! folder holds:
//!
//! - `tokens.txt`: one JWT per line, user `PREFIX0` first (the token feed);
//! - `request.txt`: the method, path and headers, in words;
//! - `wrk.lua`: a wrk script sending the n-th request with the n-th token
//!   (requests built before the run, no response callback: wrk's own CPU
//!   stays low), closed loop, or paced to `FG_RATE` requests per second
//!   per wrk thread (a schedule from the start; wrk measures from the send, so a server
//!   that falls behind is not charged for the queueing); it prints one
//!   summary line (`wrk: requests=... p50_ms=... p99_ms=...`);
//! - `oha.sh`: the oha command. oha sends the same headers with every
//!   request (it can vary the URL and the body, not a header), so it
//!   replays one user: the first answer is a 201, every later one 409
//!   `already_claimed`. That is the workload all three tools can send
//!   identically (the harness with `--users 1`, wrk with a one-line token
//!   file).
//!
//! `FG_CAMPAIGN` and `FG_TOKENS` override the campaign and the token file
//! in both scripts (a fresh campaign per run reuses the same users).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::tokens;

#[derive(Args)]
pub struct ExportArgs {
    /// The campaign the requests claim from (its id goes into the path).
    #[arg(long, value_name = "ID")]
    campaign: String,
    /// Base URL the scripts target.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Users, one token each (users PREFIX0 .. PREFIX<N-1>).
    #[arg(long, short = 'u', default_value_t = 100_000)]
    users: u32,
    /// User id prefix (the harness's default is the same).
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Lifetime of each token, seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    /// HS256 secret the service verifies user tokens with.
    #[arg(long, env = "FLASHGRAB_USER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Folder to write into (created).
    #[arg(long, value_name = "DIR", default_value = "target/export")]
    out: PathBuf,
}

/// The claim path of a campaign.
pub fn claim_path(campaign: &str) -> anyhow::Result<String> {
    if campaign.is_empty() || !campaign.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("--campaign {campaign:?} is not a campaign id (letters and digits)");
    }
    Ok(format!("/v1/campaigns/{campaign}/claim"))
}

/// The wrk script (see the module note).
pub fn wrk_lua(path: &str, tokens: &str) -> String {
    format!(
        r#"-- wrk script written by `flashgrab-loadtest export`: POST {path}, the n-th
-- request with the n-th token of the token file (one user each), built
-- before the run; no response() callback (with one wrk copies every answer
-- into Lua and takes CPU from the server). FG_CAMPAIGN / FG_TOKENS override
-- the campaign and the token file; FG_RATE paces each wrk thread to that
-- many requests per second (run -t1 for a total rate; a schedule from the
-- first request: the delay before each request is its due time minus now,
-- so wrk measures from the send).
local path = "{path}"
if os.getenv("FG_CAMPAIGN") then path = "/v1/campaigns/" .. os.getenv("FG_CAMPAIGN") .. "/claim" end
local token_file = os.getenv("FG_TOKENS") or "{tokens}"
local rate = tonumber(os.getenv("FG_RATE") or "")
local reqs = {{}}
local i = 0
wrapped = 0
local threads = {{}}

local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} fg_timespec;
int clock_gettime(int clk, fg_timespec *ts);
]]
local ts = ffi.new("fg_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local t0 = nil
local sent = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(token_file) do
    reqs[#reqs + 1] = wrk.format("POST", path, {{ ["Authorization"] = "Bearer " .. line, ["Content-Length"] = "0" }})
  end
end

if rate then
  function delay()
    local now = now_ms()
    if not t0 then t0 = now end
    sent = sent + 1
    local due = t0 + (sent - 1) * 1000 / rate
    if due <= now then return 0 end
    return math.floor(due - now)
  end
end

function request()
  i = i + 1
  if i > #reqs then
    i = 1
    wrapped = wrapped + 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local w = 0
  for _, th in ipairs(threads) do w = w + th:get("wrapped") end
  local e = summary.errors
  io.write(string.format(
    "wrk: requests=%d non2xx=%d socket_errors=%d wrapped=%d secs=%.3f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, w, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"#
    )
}

/// The oha command for one user (the first token): closed loop with `-c`,
/// fixed rate with `-q` (and its latency correction: counted from the due
/// time, as the harness's open loop does).
pub fn oha_sh(url: &str, path: &str, token: &str) -> String {
    format!(
        r#"#!/bin/sh
# oha replays one user of the drop (oha sends the same headers with every
# request): the first answer is a 201, every later one 409 already_claimed.
# Written by `flashgrab-loadtest export`. Usage:
#   oha.sh -z 10s -c 64                                  closed loop
#   oha.sh -z 10s -c 64 -q 5000 --latency-correction     fixed rate
# FG_CAMPAIGN overrides the campaign. Extra arguments go to oha.
path="{path}"
[ -n "$FG_CAMPAIGN" ] && path="/v1/campaigns/$FG_CAMPAIGN/claim"
exec oha --no-tui -m POST -H 'Authorization: Bearer {token}' "$@" "{url}$path"
"#
    )
}

fn request_txt(url: &str, path: &str, users: u32, prefix: &str) -> String {
    format!(
        "POST {url}{path}\nAuthorization: Bearer <line n of tokens.txt: the JWT of user {prefix}n, n = 0..{}>\nContent-Length: 0\n\n\
         One request per user (per_user_limit 1): a user's second claim is 409 already_claimed.\n",
        users.saturating_sub(1)
    )
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
}

pub fn run(a: &ExportArgs) -> anyhow::Result<()> {
    let path = claim_path(&a.campaign)?;
    if a.users == 0 {
        bail!("--users must be at least 1");
    }
    let url = a.url.trim_end_matches('/');
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let ids: Vec<String> = (0..a.users).map(|i| tokens::user_id(&a.user_prefix, i)).collect();
    let minted = tokens::mint(&a.jwt_secret, &ids, chrono::Utc::now().timestamp() + a.ttl);
    let tokens_path = a.out.join("tokens.txt");
    let file = std::fs::File::create(&tokens_path).with_context(|| format!("creating {}", tokens_path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for t in &minted {
        writeln!(w, "{t}")?;
    }
    w.flush()?;
    let abs = std::fs::canonicalize(&tokens_path)?;
    write(&a.out, "wrk.lua", &wrk_lua(&path, &abs.to_string_lossy()))?;
    write(&a.out, "oha.sh", &oha_sh(url, &path, &minted[0]))?;
    write(&a.out, "request.txt", &request_txt(url, &path, a.users, &a.user_prefix))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(a.out.join("oha.sh"), std::fs::Permissions::from_mode(0o755))?;
    }
    eprintln!(
        "exported {} users' claims on {url}{path} to {}: tokens.txt wrk.lua oha.sh request.txt\n  \
         wrk -t1 -c64 -d10s -s {}/wrk.lua {url}        (FG_RATE=5000 for a fixed rate)\n  \
         {}/oha.sh -z 10s -c 64                          (one user; add -q 5000 --latency-correction)",
        a.users,
        a.out.display(),
        a.out.display(),
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_take_campaign_ids_only() {
        assert_eq!(claim_path("01ABC").unwrap(), "/v1/campaigns/01ABC/claim");
        for bad in ["", "a/b", "x y", "\"; rm"] {
            assert!(claim_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_wrk_script_replays_the_token_feed() {
        let lua = wrk_lua("/v1/campaigns/C1/claim", "/tmp/t.txt");
        assert!(lua.contains(r#"local path = "/v1/campaigns/C1/claim""#));
        assert!(lua.contains(r#"os.getenv("FG_TOKENS") or "/tmp/t.txt""#));
        assert!(lua.contains(r#"wrk.format("POST", path, { ["Authorization"] = "Bearer " .. line"#));
        assert!(lua.contains("function delay()") && lua.contains("function done("));
        // Balanced braces: the format! escapes came out single.
        assert_eq!(lua.matches('{').count(), lua.matches('}').count());
        assert!(!lua.contains("{{"));
    }

    #[test]
    fn the_oha_command_sends_one_users_claim() {
        let sh = oha_sh("http://127.0.0.1:8080", "/v1/campaigns/C1/claim", "a.b.c");
        assert!(sh.starts_with("#!/bin/sh\n"));
        assert!(sh.contains(
            r#"exec oha --no-tui -m POST -H 'Authorization: Bearer a.b.c' "$@" "http://127.0.0.1:8080$path""#
        ));
    }

    #[test]
    fn exports_every_file() {
        let dir = std::env::temp_dir().join(format!("fg-export-{}", std::process::id()));
        let a = ExportArgs {
            campaign: "C1".into(),
            url: "http://127.0.0.1:9/".into(),
            users: 3,
            user_prefix: "x".into(),
            ttl: 60,
            jwt_secret: "s3cret-s3cret-s3cret-s3cret-s3cret".into(),
            out: dir.clone(),
        };
        run(&a).unwrap();
        let tokens = std::fs::read_to_string(dir.join("tokens.txt")).unwrap();
        assert_eq!(tokens.lines().count(), 3);
        let keys = flashgrab::auth::JwtKeys::new(b"s3cret-s3cret-s3cret-s3cret-s3cret");
        let now = chrono::Utc::now().timestamp();
        assert_eq!(keys.verify(tokens.lines().nth(2).unwrap(), now).unwrap().as_str(), "x2");
        let oha = std::fs::read_to_string(dir.join("oha.sh")).unwrap();
        assert!(oha.contains(tokens.lines().next().unwrap()) && oha.contains("\"http://127.0.0.1:9$path\""));
        assert!(std::fs::read_to_string(dir.join("request.txt")).unwrap().contains("user xn, n = 0..2"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
