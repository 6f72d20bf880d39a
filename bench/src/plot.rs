//! Pictures of a run, as self-contained SVG: latency by percentile (log scales, corrected and
//! service time), and throughput and p99 over time.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const W: f64 = 760.0;
const H: f64 = 300.0;
const L: f64 = 70.0;
const B: f64 = 40.0;

fn frame(title: &str, x_label: &str, y_label: &str) -> String {
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\
         <text x=\"{}\" y=\"16\" text-anchor=\"middle\" font-size=\"13\">{title}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{y_label}</text>",
        W / 2.0,
        (W + L) / 2.0,
        H - 6.0,
        H / 2.0,
        H / 2.0
    );
    let _ = write!(
        s,
        "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{L}\" y1=\"24\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>",
        H - B,
        W - 10.0,
        H - B,
        H - B
    );
    s
}

fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut t = Vec::new();
    let mut v = 10f64.powf(lo.log10().floor());
    while v <= hi * 1.0001 {
        if v >= lo / 1.0001 {
            t.push(v);
        }
        v *= 10.0;
    }
    t
}

fn human_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{}ms", us / 1e3)
    } else {
        format!("{us}us")
    }
}

/// Latency against percentile, both axes logarithmic (the x axis as 1/(1-p): 90%, 99%, ...).
pub fn percentiles(series: &[(&str, &str, &Histogram<u64>)]) -> String {
    let mut s = frame("Latency by percentile", "percentile", "latency");
    let max_nines: f64 = 5.0;
    let lo = series
        .iter()
        .filter(|(_, _, h)| !h.is_empty())
        .map(|(_, _, h)| h.min().max(1) as f64)
        .fold(f64::INFINITY, f64::min)
        .min(1e3);
    let hi = series
        .iter()
        .map(|(_, _, h)| h.max().max(1) as f64)
        .fold(1.0, f64::max);
    let (lo, hi) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil()),
    );
    let x = |nines: f64| L + nines / max_nines * (W - L - 20.0);
    let y = |v: f64| {
        (H - B) - (v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) * (H - B - 30.0)
    };
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let _ = write!(
            s,
            "<line x1=\"{0}\" y1=\"24\" x2=\"{0}\" y2=\"{1}\" stroke=\"#eee\"/><text x=\"{0}\" y=\"{2}\" text-anchor=\"middle\">{label}</text>",
            x(i as f64),
            H - B,
            H - B + 14.0
        );
    }
    for t in log_ticks(lo, hi) {
        let _ = write!(
            s,
            "<line x1=\"{L}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{4}</text>",
            y(t),
            W - 10.0,
            L - 4.0,
            y(t) + 4.0,
            human_us(t)
        );
    }
    for (k, (name, color, h)) in series.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        let mut pts = String::new();
        let steps = 200;
        for i in 0..=steps {
            let nines = max_nines * i as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-nines);
            let v = h.value_at_quantile(q.min(1.0)) as f64;
            let _ = write!(pts, "{:.1},{:.1} ", x(nines), y(v));
        }
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{pts}\"/>\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
            L + 10.0,
            40.0 + 14.0 * k as f64
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One value per second (throughput, or p99 in microseconds).
pub fn timeline(title: &str, y_label: &str, color: &str, values: &[f64]) -> String {
    let mut s = frame(title, "seconds", y_label);
    let hi = values.iter().copied().fold(1.0, f64::max) * 1.1;
    let n = values.len().max(2) as f64;
    let x = |i: f64| L + i / (n - 1.0) * (W - L - 20.0);
    let y = |v: f64| (H - B) - v / hi * (H - B - 30.0);
    for k in 0..=4 {
        let v = hi * k as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{L}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{4:.0}</text>",
            y(v),
            W - 10.0,
            L - 4.0,
            y(v) + 4.0,
            v
        );
    }
    let step = (values.len() / 10).max(1);
    for i in (0..values.len()).step_by(step) {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x(i as f64),
            H - B + 14.0,
            i + 1
        );
    }
    let pts: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1} ", x(i as f64), y(*v)))
        .collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{pts}\"/></svg>"
    );
    s
}
