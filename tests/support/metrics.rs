//! Reading `/metrics` in tests. A series that is not there is a failure,
//! never a zero: `assert_eq!(metric(..), 0.0)` must not pass because a
//! metric was renamed or lost a label.

use super::app::TestApp;

/// The `/metrics` text of instance `instance`.
pub async fn scrape(app: &TestApp, instance: usize) -> String {
    app.client.get(app.url_on(instance, "/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The value of the sample line `series` (name and labels exactly as
/// rendered, e.g. `flashgrab_shed_total` or
/// `flashgrab_rate_limited_total{limiter="user"}`), `None` when absent.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap_or_else(|e| panic!("{series}: value {v:?} is not a number: {e}")))
}

/// The value of the sample line `series`; panics, listing the samples of
/// the same family, when it is absent.
pub fn metric(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| {
        let family = series.split('{').next().unwrap_or(series);
        let same: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
        panic!("no sample {series} in /metrics (renamed? labels changed?); the family has {same:#?}")
    })
}

/// The sum of every `flashgrab_claims_total` series of `outcome` (with and
/// without the `campaign` label: the family's total). Panics when the
/// outcome has no series at all.
pub fn claims_of(text: &str, outcome: &str) -> f64 {
    let with_label = format!("flashgrab_claims_total{{outcome=\"{outcome}\",");
    let without = format!("flashgrab_claims_total{{outcome=\"{outcome}\"}} ");
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&with_label) || l.starts_with(&without))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    assert!(!values.is_empty(), "no flashgrab_claims_total series of outcome {outcome} in /metrics");
    values.iter().sum()
}
