//! The JSON report `loadgen` prints (one object per run) and `bench_report` reads back.
//!
//! All latencies are microseconds. Field names are part of the harness's interface: `run.sh` stores
//! one file per row and `bench_report` builds the table from them.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records, in microseconds (60 s); longer values are clamped.
pub const HISTOGRAM_MAX_US: u64 = 60_000_000;

/// A new latency histogram (1 µs .. 60 s, 3 significant digits: ≤ 0.1 % error).
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Records `us` into `h`, clamped into the histogram's range.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, HISTOGRAM_MAX_US));
}

/// Percentiles of one latency distribution, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    /// Summarises `h`; all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// CPU and memory of the process watched with `loadgen --watch-pid` (the gateway).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    pub pid: u32,
    /// CPU time (user + system) the process used during the measured window.
    pub cpu_us: u64,
    /// `cpu_us` divided by the requests completed in the window.
    pub cpu_us_per_request: f64,
    /// Peak resident set size since the process started (VmHWM), KiB.
    pub vm_hwm_kib: u64,
    /// Resident set size at the end of the window (VmRSS), KiB.
    pub vm_rss_kib: u64,
}

/// One load generator run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub url: String,
    pub connections: usize,
    pub warmup_secs: f64,
    /// Length of the measured window (warm-up excluded), seconds.
    pub window_secs: f64,
    /// 2xx responses to requests started in the measured window.
    pub requests: u64,
    /// Every completed response, warm-up included, any status.
    pub requests_all_phases: u64,
    /// `requests / window_secs`.
    pub rps: f64,
    /// Failed requests in the window: non-2xx by status code, and `connect`, `io`, `timeout`,
    /// `body_mismatch`.
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    /// Failed requests during the warm-up (not in `errors`).
    pub warmup_errors: u64,
    /// Connections re-opened because the server closed one or a request failed.
    pub reconnects: u64,
    /// Request sent → last body byte received, 2xx only.
    pub latency_us: Percentiles,
    /// Request sent → first body byte received (for streams: time to first token), 2xx only.
    pub ttfb_us: Percentiles,
    /// Gaps between successive body frames of one response (for streams: inter-chunk latency).
    pub chunk_gap_us: Percentiles,
    /// Mean number of body frames per 2xx response.
    pub frames_per_response: f64,
    /// Body bytes received in the window.
    pub body_bytes: u64,
    pub server: Option<ServerStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_empty_histogram_are_zero() {
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn percentiles_follow_the_recorded_values() {
        let mut h = new_histogram();
        for us in 1..=1000 {
            record_us(&mut h, us);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!(p.min, 1);
        assert!((499..=501).contains(&p.p50), "p50 {}", p.p50);
        assert!((989..=991).contains(&p.p99), "p99 {}", p.p99);
        assert_eq!(p.max, 1000);
    }

    #[test]
    fn out_of_range_values_are_clamped_not_dropped() {
        let mut h = new_histogram();
        record_us(&mut h, 0);
        record_us(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn report_round_trips_through_json() {
        let r = LoadReport {
            url: "http://127.0.0.1:1/x".into(),
            connections: 8,
            requests: 10,
            errors: BTreeMap::from([("502".to_string(), 1)]),
            server: Some(ServerStats::default()),
            ..LoadReport::default()
        };
        let text = serde_json::to_string(&r).expect("serialize");
        let back: LoadReport = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, r);
    }
}
