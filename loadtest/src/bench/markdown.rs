//! `bench-markdown`: the "Current figures" table of BENCHMARKS.md rendered
//! from a result JSON, so the page's headline is the latest result and not
//! a hand copy. With `--write PAGE` it replaces the part of PAGE between
//! the two marker lines and leaves the rest (the history) as it is.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::result::{BenchResult, rows};

pub const BEGIN: &str = "<!-- bench-markdown: begin (generated from a result JSON; edit the JSON, not this) -->";
pub const END: &str = "<!-- bench-markdown: end -->";

#[derive(Args)]
pub struct MarkdownArgs {
    /// A result written by `flashgrab-loadtest bench` (`<out>/result.json`).
    #[arg(value_name = "RESULT.json")]
    result: PathBuf,
    /// Replace the generated part of this page (between its marker lines)
    /// instead of printing it.
    #[arg(long, value_name = "PAGE")]
    write: Option<PathBuf>,
}

/// The generated block, markers included.
pub fn render(r: &BenchResult) -> String {
    let mut s = format!("{BEGIN}\n\n");
    if let Some(label) = &r.label {
        s.push_str(&format!("**{label}**\n\n"));
    }
    let mut facts = vec![
        format!("- command: `{}`", r.command),
        format!("- commit: {}", r.commit_line()),
        if r.elapsed_s > 0.0 {
            format!("- measured: {} ({:.0} s)", r.started_at, r.elapsed_s)
        } else {
            format!("- measured: {}", r.started_at)
        },
        format!("- machine: {}", r.machine_line()),
    ];
    let st = &r.settings;
    let mut how = match st.runs {
        1 => format!("1 run of {} s per figure", st.secs),
        n => format!("medians of {n} runs of {} s", st.secs),
    };
    if st.claim_only {
        how.push_str(", the instance as `serve --no-relay --no-persist` (claim path alone)");
    }
    if !st.env.is_empty() {
        how.push_str(&format!(", with `{}`", st.env.join(" ")));
    }
    facts.push(format!("- {how}; `*`: a compile ran during that run"));
    if let Some(source) = &r.source {
        facts.push(format!("- source: {source}"));
    }
    s.push_str(&facts.join("\n"));
    s.push_str("\n\n| figure | value | runs |\n|---|---|---|\n");
    for row in rows(r) {
        s.push_str(&format!("| {} | {} | {} |\n", cell(&row.figure), cell(&row.value), cell(&row.runs)));
    }
    s.push_str(&format!("\n{END}\n"));
    s
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `page` with its generated block replaced by `block`.
pub fn splice(page: &str, block: &str) -> anyhow::Result<String> {
    let begin = page.find(BEGIN).context("no begin marker line (<!-- bench-markdown: begin ...) in the page")?;
    let end = page[begin..].find(END).context("no end marker line after the begin marker")? + begin;
    let after = page[end + END.len()..].strip_prefix('\n').unwrap_or(&page[end + END.len()..]);
    Ok(format!("{}{block}{after}", &page[..begin]))
}

pub fn run(a: &MarkdownArgs) -> anyhow::Result<()> {
    let r = BenchResult::read(&a.result)?;
    let block = render(&r);
    match &a.write {
        None => print!("{block}"),
        Some(page) => {
            let text = std::fs::read_to_string(page).with_context(|| format!("reading {}", page.display()))?;
            let new = splice(&text, &block).with_context(|| page.display().to_string())?;
            std::fs::write(page, new).with_context(|| format!("writing {}", page.display()))?;
            eprintln!("{}: current figures from {}", page.display(), a.result.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::result::tests::sample;
    use super::*;

    #[test]
    fn the_table_names_command_commit_machine_and_every_figure() {
        let mut r = sample();
        r.source = Some("transcribed from BENCHMARKS.md".into());
        let md = render(&r);
        assert!(md.starts_with(BEGIN) && md.trim_end().ends_with(END));
        assert!(md.contains("- command: `scripts/bench --claim-only --connections 256 --no-build`"));
        assert!(md.contains("- commit: 7db7c60\n"));
        assert!(md.contains("- machine: 2 x Intel(R) Xeon(R) Processor, 23.5 GiB, kernel 6.18.44-fc-v669\n"));
        assert!(md.contains("claim path alone"));
        assert!(md.contains("- source: transcribed from BENCHMARKS.md"));
        assert!(md.contains("| C claims/s (201 only, wrk -c256) | 35,336 | 34,120 35,336 35,546 |\n"));
        assert!(md.contains("| C/F: flashgrab against the floor | 1.14 |  |\n"));
        // A label (a smoke run) is said first, in bold.
        r.label = Some("smoke run: not figures".into());
        assert!(render(&r).contains(&format!("{BEGIN}\n\n**smoke run: not figures**\n\n")));
    }

    #[test]
    fn the_committed_current_figures_parse_and_their_ratios_fit_their_medians() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/2026-11-30T050405Z.json");
        let r = BenchResult::read(&path).unwrap();
        let f = &r.figures;
        let derived =
            super::super::figures::Ratios::of(f.h.median, f.r_p16.median, f.r_p1.median, f.c.median, f.f.median);
        assert_eq!(derived.l_p16, r.ratios.l_p16);
        assert_eq!(derived.l_p1, r.ratios.l_p1);
        for (a, b) in [(derived.c_over_l_p16, r.ratios.c_over_l_p16), (derived.c_over_f, r.ratios.c_over_f)] {
            assert!((a.unwrap() - b.unwrap()).abs() < 1e-3, "{a:?} vs {b:?}");
        }
        assert!(render(&r).contains("| C/L (R -P16) | 0.84 |  |"));
    }

    #[test]
    fn splice_replaces_only_the_generated_block() {
        let page = format!("# Benchmarks\n\n## Current figures\n\n{BEGIN}\nold\n{END}\n\n## History\n\nkept\n");
        let new = splice(&page, &format!("{BEGIN}\nnew\n{END}\n")).unwrap();
        assert_eq!(new, format!("# Benchmarks\n\n## Current figures\n\n{BEGIN}\nnew\n{END}\n\n## History\n\nkept\n"));
        // Twice gives the same page.
        assert_eq!(splice(&new, &format!("{BEGIN}\nnew\n{END}\n")).unwrap(), new);
        assert!(splice("# no markers\n", "x").is_err());
        assert!(splice(&format!("{BEGIN}\nno end\n"), "x").is_err());
    }
}
