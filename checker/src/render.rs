//! Pictures of a violation: a text timeline for the terminal, and a self-contained HTML page
//! with an SVG timeline (one lane per client, operations as bars, the impossible one in red).

use std::fmt::Write as _;

use crate::history::{Op, OpKind, Outcome};
use crate::linear::Violation;

/// A value as drawn: padding (a run of one character, at least 8 long, that ends it: kv-bench
/// pads its values with dots to the value size) left out and marked `…`, and what remains cut
/// to 16 characters.
pub fn short(value: &str) -> String {
    const MAX: usize = 16;
    let mut s = value;
    if let Some(last) = s.chars().last() {
        let kept = s.trim_end_matches(last);
        if s.len() - kept.len() >= 8 && !kept.is_empty() {
            s = kept;
        }
    }
    let cut = s.chars().count() > MAX;
    let mut out: String = s.chars().take(MAX).collect();
    if cut || s.len() < value.len() {
        out.push('…');
    }
    out
}

/// A short label: `w 3`, `r 5`, `r nil`, `cas 1→2`, `del`, `app x`; `?` marks unknown outcome.
pub fn label(op: &Op) -> String {
    let v = |s: &Option<String>| s.as_deref().map_or_else(|| "nil".into(), short);
    let mut l = match op.op {
        OpKind::Read => format!("r {}", v(&op.value)),
        OpKind::Write => format!("w {}", v(&op.value)),
        OpKind::Delete => "del".into(),
        OpKind::Append => format!("app {}", v(&op.value)),
        OpKind::Cas => format!(
            "cas {}→{}{}",
            v(&op.expected),
            v(&op.value),
            if op.applied == Some(false) {
                " ✗"
            } else {
                ""
            }
        ),
    };
    match op.outcome {
        Outcome::Unknown => l.push_str(" ?"),
        Outcome::Fail => l.push_str(" (fail)"),
        Outcome::Ok => {}
    }
    l
}

/// A history time (nanoseconds since the run started) in milliseconds.
fn ms(t: u64) -> String {
    format!("{:.3} ms", t as f64 / 1e6)
}

fn lanes(v: &Violation) -> Vec<u64> {
    let mut c: Vec<u64> = v.ops.iter().map(|o| o.client).collect();
    c.sort_unstable();
    c.dedup();
    c
}

/// Where each call and return of a window is drawn, from 0 to 1: by rank among the window's
/// times, not to scale, so that an operation of a millisecond beside one that ran for seconds
/// is still seen, and which ended before which started (all that linearizability asks) is
/// never lost to rounding.
struct Axis(Vec<u64>);

impl Axis {
    fn of(v: &Violation) -> Self {
        let mut t: Vec<u64> = v.ops.iter().flat_map(|o| [o.start_ns, o.end_ns]).collect();
        t.sort_unstable();
        t.dedup();
        Axis(t)
    }

    fn at(&self, t: u64) -> f64 {
        let i = self.0.partition_point(|&x| x < t);
        if self.0.len() < 2 {
            return 0.0;
        }
        i as f64 / (self.0.len() - 1) as f64
    }
}

fn span(v: &Violation) -> (u64, u64) {
    let t0 = v.ops.iter().map(|o| o.start_ns).min().unwrap_or(0);
    let t1 = v.ops.iter().map(|o| o.end_ns).max().unwrap_or(t0 + 1);
    (t0, t1.max(t0 + 1))
}

/// The text timeline.
pub fn text(v: &Violation) -> String {
    const WIDTH: usize = 72;
    let (t0, t1) = span(v);
    let axis = Axis::of(v);
    let col = |t: u64| (axis.at(t) * (WIDTH - 1) as f64).round() as usize;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "key {:?}: not linearizable. No order of these {} operations, consistent with real time, \
         explains every result{}; the one marked !! cannot be placed.",
        v.key,
        v.ops.len(),
        if v.from_any_state {
            ", whatever the key held before them"
        } else {
            " from the start of the history"
        }
    );
    let (a, b) = (ms(t0), ms(t1));
    let mid = "calls and returns in order, not to scale";
    let room = WIDTH.saturating_sub(a.len() + b.len());
    let mid = if room >= mid.len() + 2 { mid } else { "" };
    let left_pad = (room - mid.len()) / 2;
    let _ = writeln!(
        out,
        "{:>10} |{a}{:left_pad$}{mid}{:right$}{b}|",
        "",
        "",
        "",
        right = room - mid.len() - left_pad
    );
    for c in lanes(v) {
        // Operations of one client do not overlap; draw them on one line, then labels below.
        let mut bar = vec![' '; WIDTH + 2];
        let mut labels = Vec::new();
        for (i, o) in v.ops.iter().enumerate().filter(|(_, o)| o.client == c) {
            let (a, b) = (col(o.start_ns), col(o.end_ns).max(col(o.start_ns) + 1));
            let mark = if i == v.culprit { '!' } else { '=' };
            for x in bar.iter_mut().take(b).skip(a + 1) {
                *x = mark;
            }
            bar[a] = '[';
            bar[b.min(WIDTH)] = if o.outcome == Outcome::Unknown {
                '>'
            } else {
                ']'
            };
            labels.push((
                a,
                format!("{}{}", label(o), if i == v.culprit { " !!" } else { "" }),
            ));
        }
        let _ = writeln!(
            out,
            "{:>10} {}",
            format!("client {c}"),
            bar.iter().collect::<String>().trim_end()
        );
        let mut line = String::new();
        for (a, l) in labels {
            let pad = (a + 1).saturating_sub(line.chars().count());
            line.push_str(&" ".repeat(pad.max(usize::from(!line.is_empty()))));
            line.push_str(&l);
        }
        let _ = writeln!(out, "{:>10} {}", "", line);
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A self-contained HTML page with an SVG timeline of each violation.
pub fn html(violations: &[&Violation], title: &str) -> String {
    let mut out = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;margin:2em}} .op{{fill:#9ecae1;stroke:#3182bd}} \
         .bad{{fill:#fc9272;stroke:#de2d26;stroke-width:2}} .unk{{fill:#eee;stroke:#999;stroke-dasharray:4}} \
         text{{font-size:12px;font-family:monospace}}</style></head><body><h1>{}</h1>",
        esc(title),
        esc(title)
    );
    for v in violations {
        let (t0, t1) = span(v);
        let axis = Axis::of(v);
        let lanes = lanes(v);
        let (w, lane_h, left) = (1000.0, 48.0, 90.0);
        let x = |t: u64| left + axis.at(t) * (w - left - 20.0);
        let h = lanes.len() as f64 * lane_h + 40.0;
        let _ = write!(
            out,
            "<h2>key {}</h2><p>No order of these {} operations that respects real time explains \
             every result{}. The red operation cannot be placed. Dashed: outcome unknown (may \
             have taken effect at any time after its start, or never). Time runs left to right \
             but not to scale: every call and return has its own step, so which operation \
             ended before which started is always visible (exact times on hover).</p>\
             <svg width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">",
            esc(&v.key),
            v.ops.len(),
            if v.from_any_state {
                ", whatever the key held before them"
            } else {
                " from the start of the history"
            }
        );
        let _ = write!(
            out,
            "<text x=\"{left}\" y=\"14\">{}</text><text x=\"{}\" y=\"14\" text-anchor=\"end\">{}</text>",
            ms(t0),
            w - 20.0,
            ms(t1)
        );
        for (li, c) in lanes.iter().enumerate() {
            let y = 24.0 + li as f64 * lane_h;
            let _ = write!(
                out,
                "<text x=\"4\" y=\"{}\">client {c}</text><line x1=\"{left}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#ddd\"/>",
                y + 18.0,
                w - 20.0,
                y + 30.0,
                y + 30.0
            );
            for (i, o) in v.ops.iter().enumerate().filter(|(_, o)| o.client == *c) {
                let class = if i == v.culprit {
                    "bad"
                } else if o.outcome == Outcome::Unknown {
                    "unk"
                } else {
                    "op"
                };
                let (a, b) = (x(o.start_ns), x(o.end_ns).max(x(o.start_ns) + 3.0));
                let _ = write!(
                    out,
                    "<rect class=\"{class}\" x=\"{a:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"24\" rx=\"3\"><title>{} [{}, {}] {:?}</title></rect>\
                     <text x=\"{:.1}\" y=\"{}\">{}</text>",
                    b - a,
                    esc(&label(o)),
                    ms(o.start_ns),
                    ms(o.end_ns),
                    o.outcome,
                    a + 3.0,
                    y + 16.0,
                    esc(&label(o))
                );
            }
        }
        out.push_str("</svg>");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_drawn_without_their_padding_and_at_most_16_characters() {
        let padded = format!("c5-2148{}", ".".repeat(93));
        assert_eq!(short(&padded), "c5-2148…");
        assert_eq!(short("v12"), "v12");
        assert_eq!(short("........"), "........");
        assert_eq!(short("k........"), "k…");
        let long = "abcdefghijklmnopqrstuvwxyz";
        assert_eq!(short(long), "abcdefghijklmnop…");
        // Seven of one character at the end is not padding.
        assert_eq!(short("x1111111"), "x1111111");
    }
}
