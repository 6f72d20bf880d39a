//! `kv-bench check HISTORY`: linearizability, stale reads and consistency windows of a recorded
//! history, explained for a person (see kv-checker).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use kv_checker::stale::stale_reads;
use kv_checker::window::windows;
use kv_checker::{KeyVerdict, Verdict, check, parse, render};

/// Exit codes: 0 linearizable, 1 violation, 2 unknown or error.
pub mod exit {
    /// Every key linearizable.
    pub const LINEARIZABLE: u8 = 0;
    /// A violation was found.
    pub const VIOLATION: u8 = 1;
    /// The budget ran out, or the history could not be read.
    pub const UNKNOWN: u8 = 2;
}

/// What to check and how.
#[derive(Debug, Clone)]
pub struct CheckArgs {
    /// The history file (JSON Lines).
    pub history: PathBuf,
    /// Where to write the HTML picture of violations.
    pub html: Option<PathBuf>,
    /// Time budget for the whole check.
    pub budget: Duration,
    /// Threads.
    pub threads: usize,
    /// Print JSON instead of text.
    pub json: bool,
    /// Check every key even after a violation is found.
    pub all_keys: bool,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Runs the check, printing the report; returns the exit code.
pub fn run(a: &CheckArgs) -> u8 {
    let file = match std::fs::File::open(&a.history) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kv-bench check: cannot open {}: {e}", a.history.display());
            return exit::UNKNOWN;
        }
    };
    let (ops, probes) = match parse(std::io::BufReader::new(file)) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("kv-bench check: {}: {e}", a.history.display());
            return exit::UNKNOWN;
        }
    };
    let report = check(&ops, Some(a.budget), a.threads, a.all_keys);
    let stale = stale_reads(&ops);
    let win = windows(&probes);
    let verdict = report.verdict();
    let violations = report.violations();
    let unknown: Vec<(&String, &String)> = report
        .keys
        .iter()
        .filter_map(|(k, v)| match v {
            KeyVerdict::Unknown(why) => Some((k, why)),
            _ => None,
        })
        .collect();
    let mut html_written = None;
    if let Some(path) = &a.html
        && !violations.is_empty()
    {
        let title = format!("{}: not linearizable", a.history.display());
        match std::fs::write(path, render::html(&violations, &title)) {
            Ok(()) => html_written = Some(path.clone()),
            Err(e) => eprintln!("kv-bench check: cannot write {}: {e}", path.display()),
        }
    }
    let mut vb: Vec<f64> = stale.versions_behind.iter().map(|&v| v as f64).collect();
    let mut mb = stale.ms_behind.clone();
    let mut wm = win.windows_ms.clone();
    let verdict_text = match verdict {
        Verdict::Linearizable => "linearizable",
        Verdict::Violation => "not linearizable",
        Verdict::Unknown => "unknown",
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = serde_json::json!({
            "verdict": verdict_text,
            "ops": report.ops,
            "keys": report.keys.len(),
            "elapsed_ms": report.elapsed.as_secs_f64() * 1e3,
            "violations": violations.iter().map(|v| serde_json::json!({
                "key": v.key, "ops": v.ops, "culprit": v.culprit, "from_any_state": v.from_any_state,
            })).collect::<Vec<_>>(),
            "unknown_keys": unknown.iter().map(|(k, why)| serde_json::json!({"key": k, "reason": why})).collect::<Vec<_>>(),
            "stale_reads": {"reads": stale.reads, "stale": stale.stale, "rate": stale.rate(),
                "versions_behind": {"p50": percentile(&mut vb, 50.0), "p99": percentile(&mut vb, 99.0), "max": vb.last().copied().unwrap_or(0.0)},
                "ms_behind": {"p50": percentile(&mut mb, 50.0), "p99": percentile(&mut mb, 99.0), "max": mb.last().copied().unwrap_or(0.0)}},
            "consistency_window_ms": {"probes": win.windows_ms.len() as u64 + win.never, "never": win.never,
                "p50": percentile(&mut wm, 50.0), "p99": percentile(&mut wm, 99.0), "max": wm.last().copied().unwrap_or(0.0)},
            "html": html_written,
        });
        let _ = writeln!(out, "{v}");
    } else {
        let _ = writeln!(
            out,
            "{}: {verdict_text} ({} operations on {} keys, checked in {:.1} ms)",
            a.history.display(),
            report.ops,
            report.keys.len(),
            report.elapsed.as_secs_f64() * 1e3
        );
        for v in &violations {
            let _ = writeln!(out, "\n{}", render::text(v));
        }
        for (k, why) in &unknown {
            let _ = writeln!(out, "key {k:?}: unknown: {why}");
        }
        if let Some(p) = &html_written {
            let _ = writeln!(out, "picture: {}", p.display());
        }
        if stale.reads > 0 {
            let _ = writeln!(
                out,
                "stale reads: {} of {} ({:.3}%); versions behind p50 {} max {}; ms behind p50 {:.1} p99 {:.1} max {:.1}",
                stale.stale,
                stale.reads,
                stale.rate() * 100.0,
                percentile(&mut vb, 50.0),
                vb.last().copied().unwrap_or(0.0),
                percentile(&mut mb, 50.0),
                percentile(&mut mb, 99.0),
                mb.last().copied().unwrap_or(0.0)
            );
        }
        if !probes.is_empty() {
            let _ = writeln!(
                out,
                "consistency window: {} probes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} never complete",
                probes.len(),
                percentile(&mut wm, 50.0),
                percentile(&mut wm, 99.0),
                wm.last().copied().unwrap_or(0.0),
                win.never
            );
        }
    }
    match verdict {
        Verdict::Linearizable => exit::LINEARIZABLE,
        Verdict::Violation => exit::VIOLATION,
        Verdict::Unknown => exit::UNKNOWN,
    }
}
