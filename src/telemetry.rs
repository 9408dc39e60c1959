//! Structured logs through `tracing`. `RUST_LOG` filters (default `info`);
//! `FLASHGRAB_LOG_FORMAT=json` switches to one JSON object per line for log
//! shippers. [`LogEvery`] throttles a line that repeats (a node down, a
//! queue refusing) to one a second with the count of those skipped.
//!
//! Request context: every line written while a request is served carries
//! its `request_id` (and, when the request came with a W3C `traceparent`,
//! `trace_id` and `parent_span_id`): `http::request_id` runs the request's
//! future inside [`in_request`], and the line formatter adds the fields of
//! the [`RequestContext`] it finds (text: ` request_id=...` at the end of
//! the line; JSON: top-level keys). Not a `tracing` span per request: on
//! the sold-out fast path a span (made, formatted, entered and left on
//! every poll, closed) cost 23 % of the ~48k instructions a request
//! costs, where a task-local value costs a pointer swap per poll and the
//! work happens only for the lines actually written (BENCHMARKS.md). The
//! value is per task (the key is static, the state is not): a task the
//! request spawns does not carry it, as it would not carry a span.

use std::fmt::Write as _;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::format().json();
            builder.json().event_format(WithRequest { inner: json, json: true }).try_init()
        }
        LogFormat::Text => {
            let text = tracing_subscriber::fmt::format().with_ansi(ansi);
            builder.event_format(WithRequest { inner: text, json: false }).try_init()
        }
    };
}

/// What the log lines of one request carry.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request's `x-request-id` (well-formed: short, no quotes).
    pub request_id: axum::http::HeaderValue,
    /// `(trace_id, parent_span_id)` of its valid `traceparent`, if any.
    pub trace: Option<(Box<str>, Box<str>)>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Runs `f` with `ctx` as the request context of its log lines.
pub fn in_request<F: Future>(ctx: RequestContext, f: F) -> impl Future<Output = F::Output> {
    REQUEST.scope(ctx, f)
}

/// The request context of the task running now, if it serves a request.
pub fn current_request() -> Option<RequestContext> {
    REQUEST.try_with(Clone::clone).ok()
}

/// A line formatter that adds the request context to the lines written
/// inside [`in_request`] and leaves the others as `inner` writes them.
struct WithRequest<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithRequest<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(req) = current_request() else {
            return self.inner.format_event(ctx, writer, event);
        };
        // Written to a buffer first, to put the fields in (a line of a
        // request loses its colours on a terminal: cosmetic).
        let mut line = String::new();
        self.inner.format_event(ctx, tracing_subscriber::fmt::format::Writer::new(&mut line), event)?;
        writer.write_str(&with_request_fields(&line, &req, self.json))
    }
}

/// `line` (one formatted event, ending in a newline) with the request's
/// fields: top-level keys of a JSON object, or `key=value` pairs at the
/// end of a text line.
fn with_request_fields(line: &str, req: &RequestContext, json: bool) -> String {
    let id = req.request_id.to_str().unwrap_or("");
    let mut fields = String::new();
    if json {
        let _ = write!(fields, "\"request_id\":\"{id}\",");
        if let Some((trace, parent)) = &req.trace {
            let _ = write!(fields, "\"trace_id\":\"{trace}\",\"parent_span_id\":\"{parent}\",");
        }
        return match line.strip_prefix('{') {
            Some(rest) => format!("{{{fields}{rest}"),
            None => line.to_owned(),
        };
    }
    let _ = write!(fields, " request_id={id}");
    if let Some((trace, parent)) = &req.trace {
        let _ = write!(fields, " trace_id={trace} parent_span_id={parent}");
    }
    let body = line.strip_suffix('\n').unwrap_or(line);
    format!("{body}{fields}\n")
}

/// Log throttling for one call site or loop: the first event is logged,
/// then at most one per [`LogEvery::EVERY`]; the ones skipped in between
/// are counted and reported with the next line. A repeated cause (a node
/// down, a queue refusing) is then one line a second, not one per retry or
/// per request.
#[derive(Debug, Default)]
pub struct LogEvery {
    /// Milliseconds since the Unix epoch of the last line logged (0: none).
    last_ms: AtomicU64,
    /// Events skipped since.
    skipped: AtomicU64,
}

impl Clone for LogEvery {
    fn clone(&self) -> Self {
        Self {
            last_ms: AtomicU64::new(self.last_ms.load(Ordering::Relaxed)),
            skipped: AtomicU64::new(self.skipped.load(Ordering::Relaxed)),
        }
    }
}

impl LogEvery {
    pub const EVERY: Duration = Duration::from_secs(1);

    pub const fn new() -> Self {
        Self { last_ms: AtomicU64::new(0), skipped: AtomicU64::new(0) }
    }

    /// Should this event be logged? `Some(skipped)`: yes, and that many
    /// were skipped since the last line; `None`: no (it is counted).
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .max(1);
        self.allow_at(now)
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= Self::EVERY.as_millis() as u64;
        if due && self.last_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(trace: bool) -> RequestContext {
        RequestContext {
            request_id: axum::http::HeaderValue::from_static("01KBT8Q3M2ZK5S0000000000A1"),
            trace: trace.then(|| ("4bf92f3577b34da6a3ce929d0e0e4736".into(), "00f067aa0ba902b7".into())),
        }
    }

    /// Every line written inside a request carries its id (and trace),
    /// through the real formatter; lines outside carry none.
    #[test]
    fn lines_of_a_request_carry_its_id() {
        for json in [false, true] {
            let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
            let out = buf.clone();
            let make = move || Sink(out.clone());
            let sub = tracing_subscriber::fmt().with_writer(make).with_ansi(false);
            let dispatch: tracing::Dispatch = if json {
                let f = WithRequest { inner: tracing_subscriber::fmt::format().json(), json: true };
                sub.json().event_format(f).finish().into()
            } else {
                let f = WithRequest { inner: tracing_subscriber::fmt::format().with_ansi(false), json: false };
                sub.event_format(f).finish().into()
            };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            tracing::dispatcher::with_default(&dispatch, || {
                rt.block_on(in_request(ctx(json), async {
                    tracing::warn!(campaign = "c1", "inside the request");
                    tokio::task::yield_now().await;
                    tracing::info!("after a yield");
                }));
                tracing::info!("outside any request");
            });
            let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 3, "{text}");
            for l in &lines[..2] {
                assert!(l.contains("01KBT8Q3M2ZK5S0000000000A1"), "{l}");
            }
            assert!(!lines[2].contains("request_id"), "{}", lines[2]);
            if json {
                for l in &lines {
                    serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
                }
                let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
                assert_eq!(v["request_id"], "01KBT8Q3M2ZK5S0000000000A1");
                assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
                assert_eq!(v["parent_span_id"], "00f067aa0ba902b7");
                assert_eq!(v["fields"]["campaign"], "c1");
            } else {
                assert!(lines[0].ends_with(" request_id=01KBT8Q3M2ZK5S0000000000A1"), "{}", lines[0]);
            }
        }
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_repeated_event_is_logged_once_a_second_with_the_skipped_count() {
        let l = LogEvery::new();
        assert_eq!(l.allow_at(10_000), Some(0));
        assert_eq!(l.allow_at(10_001), None);
        assert_eq!(l.allow_at(10_999), None);
        assert_eq!(l.allow_at(11_000), Some(2));
        assert_eq!(l.allow_at(11_500), None);
        assert_eq!(l.allow_at(13_000), Some(1));
    }
}
