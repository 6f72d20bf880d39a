//! Group commit's gathering rule: when a flush about to start should first wait for more
//! writes.
//!
//! A log flusher that starts its fsync as soon as anything is queued splits closed-loop writers
//! into groups that take turns. The writers one flush acknowledges send their next writes
//! together, a round trip later; by then the flusher has started the next flush with the
//! writes that were waiting, so the group waits for that whole fsync and then for its own.
//! With 16 writers and a 4.5 ms flush (`kvctl fault disk n1 4ms` on one node), flushes settled
//! at 8 writes each, every write waited for two of them, and throughput was 1,693-1,763
//! writes/s: 49% of 16 writes per flush time (78-79% with this rule).
//!
//! The rule: when the writes that missed the last flush arrived in a burst soon after it
//! started (at least half of them within the window below), they came from writers answering
//! the flush before; so the writers the last flush acknowledged will also come back together.
//! The next flush then waits for as many writes as the last one carried plus those that missed
//! it, for at most a quarter of the mean flush time (and never more than [`MAX_WINDOW`]).
//! Waiting `w` costs the writes already queued `w`; the ones gathered are spared a whole
//! flush. Writes that arrive independently of the flushes (open-loop load, many unrelated
//! clients) spread over the whole flush, so they do not look like a burst and nothing waits.
//! A wait that runs out with fewer than half of the writes it waited for turns waiting off
//! for the next [`PAUSE`] flushes.
//! One writer at a time never waits (the last flush carried one write and none missed it).
//! Nor does anything wait on a disk whose flushes take less than [`MIN_FLUSH`]: there the
//! window would be shorter than the writers' round trip, and on this machine (fsync about
//! 0.2 ms) such waits cost leader-follower and leaderless clusters 5-16% of their throughput
//! at 16 clients.
//!
//! Sans-IO: the flushers ask [`Gather::plan`] and report each flush with [`Gather::flushed`];
//! the tests below run it against simulated closed-loop and open-loop writers.

use std::time::Duration;

/// The longest a flush waits for more writes.
pub(crate) const MAX_WINDOW: Duration = Duration::from_millis(10);

/// Flushes shorter than this on average never wait.
pub(crate) const MIN_FLUSH: Duration = Duration::from_millis(1);

/// Flushes without waiting after a wait that gathered less than half of what it waited for.
pub(crate) const PAUSE: u32 = 4;

/// What the last flushes looked like.
#[derive(Debug, Clone)]
pub(crate) struct Gather {
    /// Records in the last flush.
    last: usize,
    /// Records that arrived while it ran (they missed it).
    missed: usize,
    /// Most of those arrived within the window after it started (true when none missed it:
    /// writers that all made one flush come back together too).
    bursty: bool,
    /// If the flush about to start waited: the records ready then, and those it waited for.
    planned: Option<(usize, usize)>,
    /// Flushes left before waiting is tried again.
    pause: u32,
    /// Mean time of a flush (write and fsync), exponentially weighted; zero before the first.
    mean: Duration,
}

/// A wait decided by [`Gather::plan`]: until `records` are ready, for at most `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wait {
    pub records: usize,
    pub window: Duration,
}

impl Gather {
    pub(crate) fn new() -> Self {
        Gather {
            last: 0,
            missed: 0,
            bursty: false,
            planned: None,
            pause: 0,
            mean: Duration::ZERO,
        }
    }

    /// How long after a flush starts an arrival counts as early (see [`Gather::flushed`]),
    /// and the longest a flush waits; zero when flushes are too short to wait for.
    pub(crate) fn window(&self) -> Duration {
        if self.mean < MIN_FLUSH {
            return Duration::ZERO;
        }
        (self.mean / 4).min(MAX_WINDOW)
    }

    /// With `ready` records queued and the flusher free: `None` to flush now, or how long to
    /// wait for how many.
    pub(crate) fn plan(&mut self, ready: usize) -> Option<Wait> {
        let records = self.last + self.missed;
        let window = self.window();
        if self.pause > 0 || !self.bursty || ready >= records || window.is_zero() {
            return None;
        }
        self.planned = Some((ready, records));
        Some(Wait { records, window })
    }

    /// A flush of `records` took `took` (write and fsync, not the wait before it); `missed`
    /// records arrived while it ran, `early` of them within [`Gather::window`] of its start.
    pub(crate) fn flushed(&mut self, records: usize, took: Duration, missed: usize, early: usize) {
        match self.planned.take() {
            Some((ready, wanted)) if (records.saturating_sub(ready)) * 2 < wanted - ready => {
                self.pause = PAUSE;
            }
            Some(_) => {}
            None => self.pause = self.pause.saturating_sub(1),
        }
        self.last = records;
        self.missed = missed;
        self.bursty = early * 2 >= missed;
        self.mean = if self.mean.is_zero() {
            took
        } else {
            (self.mean * 7 + took) / 8
        };
    }
}

/// Tests: flushes made with a group commit window (`--group-commit-window`), each as
/// `(records, time waited before it started)`, `total` records over them. The first two hold
/// one write each, the second written more than a window after the first: it did not wait.
/// The rest came within `elapsed`, at most one per window, so their records shared them.
#[cfg(test)]
pub(crate) fn check_windowed_flushes(
    flushes: &[(usize, Duration)],
    total: usize,
    elapsed: Duration,
    window: Duration,
) {
    assert_eq!((flushes[0].0, flushes[1].0), (1, 1), "{flushes:?}");
    assert!(
        flushes[1].1 < window / 2,
        "the flush after an idle time waited: {flushes:?}"
    );
    assert_eq!(flushes.iter().map(|f| f.0).sum::<usize>(), total);
    let most = (elapsed.as_millis() / window.as_millis()) as usize + 2;
    assert!(
        flushes.len() - 2 <= most,
        "{} flushes in {elapsed:?} with a {window:?} window: {flushes:?}",
        flushes.len() - 2
    );
    assert!(flushes[2..].iter().any(|f| f.0 > 1), "{flushes:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One flusher whose flush takes `flush` µs, fed `arrivals` (µs; more come from `next`,
    /// called with each record's acknowledgement time and its place among those acknowledged
    /// together). Runs `flushes` flushes, with or without the gathering rule; returns the
    /// records per second, the mean records per flush and the mean latency (arrival to
    /// acknowledgement) in µs.
    fn run(
        mut arrivals: Vec<u64>,
        mut next: impl FnMut(u64, usize) -> Option<u64>,
        flush: u64,
        gather: bool,
        flushes: usize,
    ) -> (f64, f64, f64) {
        let mut g = Gather::new();
        let mut now = 0u64;
        let (mut acked, mut latency) = (0usize, 0u64);
        arrivals.sort_unstable();
        for _ in 0..flushes {
            // The flusher is free at `now`; it starts when a write is there.
            now = now.max(arrivals[0]);
            let ready = |t: u64| arrivals.partition_point(|&a| a <= t);
            if gather && let Some(w) = g.plan(ready(now)) {
                let deadline = now + w.window.as_micros() as u64;
                let enough = arrivals.get(w.records - 1).copied().unwrap_or(u64::MAX);
                now = enough.min(deadline).max(now);
            }
            let n = ready(now);
            let start = now;
            now += flush;
            let rest = arrivals.split_off(n);
            latency += arrivals.iter().map(|a| now - a).sum::<u64>();
            acked += n;
            arrivals = rest;
            let early_until = start + g.window().as_micros() as u64;
            let missed = arrivals.partition_point(|&a| a <= now);
            let early = arrivals.partition_point(|&a| a <= early_until);
            g.flushed(n, Duration::from_micros(flush), missed, early);
            let before = arrivals.len();
            arrivals.extend((0..n).filter_map(|k| next(now, k)));
            if arrivals.len() > before {
                arrivals.sort_unstable();
            }
        }
        (
            acked as f64 * 1e6 / now as f64,
            acked as f64 / flushes as f64,
            latency as f64 / acked as f64,
        )
    }

    /// 16 writers, back `think` µs after their acknowledgement, 10 µs after one another;
    /// they start in two groups, `first` of them at 0 and the rest 500 µs later.
    fn closed_loop(first: usize, think: u64, gather: bool) -> (f64, f64, f64) {
        let start = (0..16).map(|k| {
            if k < first {
                k as u64 * 10
            } else {
                500 + k as u64 * 10
            }
        });
        run(
            start.collect(),
            |acked, k| Some(acked + think + k as u64 * 10),
            4600,
            gather,
            400,
        )
    }

    #[test]
    fn closed_loop_writers_take_turns_without_gathering_and_share_flushes_with_it() {
        let bound = 16.0 * 1e6 / 4600.0;
        for first in [1, 8, 12] {
            let (without, per_flush_without, _) = closed_loop(first, 150, false);
            let (with, per_flush_with, _) = closed_loop(first, 150, true);
            eprintln!(
                "groups {first}+{}: without {without:.0}/s, {per_flush_without:.1} per flush; \
                 with {with:.0}/s, {per_flush_with:.1} per flush; bound {bound:.0}/s",
                16 - first
            );
            assert!(without < 0.6 * bound, "groups {first}: {without:.0}/s");
            assert!(
                with > 0.9 * bound && per_flush_with > 15.5,
                "groups {first}: {with:.0}/s, {per_flush_with:.1} per flush"
            );
        }
    }

    #[test]
    fn one_writer_never_waits() {
        let mut g = Gather::new();
        g.flushed(1, Duration::from_millis(4), 0, 0);
        assert_eq!(g.plan(1), None);
        let (rate, per_flush, _) = run(vec![0], |t, _| Some(t + 100), 4000, true, 100);
        assert!((per_flush - 1.0).abs() < 1e-9);
        // One flush and one think time per write: nothing added.
        assert!((rate - 1e6 / 4100.0).abs() < 1.0, "{rate}");
    }

    /// Open-loop arrivals: a pseudo-random stream at `rate_per_flush` writes per flush time,
    /// whatever the acknowledgements.
    fn open_loop(rate_per_flush: f64, gather: bool) -> (f64, f64, f64) {
        let flush = 4000u64;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut t = 0u64;
        let flushes = 2000;
        let arrivals: Vec<u64> = (0..(rate_per_flush.max(1.0) * flushes as f64 * 1.5) as usize)
            .map(|_| {
                // Exponential gaps (xorshift, then the inverse of the distribution).
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                t += (-(1.0 - u).ln() * flush as f64 / rate_per_flush) as u64;
                t
            })
            .collect();
        run(arrivals, |_, _| None, flush, gather, flushes)
    }

    #[test]
    fn open_loop_writes_do_not_wait() {
        for rate in [0.5, 2.0, 8.0, 30.0] {
            let (_, per_flush_without, lat_without) = open_loop(rate, false);
            let (_, per_flush_with, lat_with) = open_loop(rate, true);
            eprintln!(
                "{rate} per flush time: without {lat_without:.0} µs, {per_flush_without:.1} per \
                 flush; with {lat_with:.0} µs, {per_flush_with:.1} per flush"
            );
            assert!(
                lat_with < lat_without * 1.05,
                "{rate} per flush time: mean latency {lat_with:.0} µs with the rule, \
                 {lat_without:.0} without"
            );
        }
    }

    #[test]
    fn a_burst_after_the_flush_started_makes_the_next_wait_for_both_groups() {
        let mut g = Gather::new();
        g.flushed(10, Duration::from_millis(4), 9, 1);
        // Arrivals spread over the flush: no wait.
        assert_eq!(g.plan(9), None);
        g.flushed(8, Duration::from_millis(4), 8, 7);
        assert_eq!(
            g.plan(8),
            Some(Wait {
                records: 16,
                window: Duration::from_millis(1)
            })
        );
        // Those it waited for came: it goes on waiting.
        g.flushed(16, Duration::from_millis(4), 0, 0);
        assert!(g.plan(1).is_some());
    }

    #[test]
    fn a_wait_that_runs_out_pauses_waiting() {
        let mut g = Gather::new();
        g.flushed(16, Duration::from_millis(4), 0, 0);
        assert!(g.plan(1).is_some());
        // Most came: it goes on waiting.
        g.flushed(10, Duration::from_millis(4), 0, 0);
        assert!(g.plan(1).is_some());
        // Eleven writers left: the flush carried 4 of the 10 it waited for.
        g.flushed(4, Duration::from_millis(4), 0, 0);
        for _ in 0..PAUSE {
            assert_eq!(g.plan(1), None);
            g.flushed(4, Duration::from_millis(4), 0, 0);
        }
        assert!(g.plan(1).is_some());
    }

    #[test]
    fn the_window_is_a_quarter_of_the_mean_flush_and_at_most_the_cap() {
        let mut g = Gather::new();
        assert_eq!(g.window(), Duration::ZERO);
        assert_eq!(g.plan(1), None, "nothing known yet: no wait");
        g.flushed(8, Duration::from_micros(200), 0, 0);
        assert_eq!(g.plan(1), None, "a fast disk: no wait");
        let mut g = Gather::new();
        g.flushed(8, Duration::from_millis(2), 0, 0);
        assert_eq!(
            g.plan(1).map(|w| w.window),
            Some(Duration::from_micros(500))
        );
        for _ in 0..100 {
            g.flushed(8, Duration::from_millis(100), 0, 0);
        }
        assert_eq!(g.window(), MAX_WINDOW);
    }
}
