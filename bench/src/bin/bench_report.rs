//! `bench_report`: turns the `loadgen` JSON files of one `bench/run.sh` run into the results table.
//!
//! Rows are named `KIND/CONNECTIONS=FILE`, KIND one of `direct`, `proxy`, `proxy-pg` (proxy mode on
//! PostgreSQL), `sandbox`, `anthropic` (non-streaming)
//! or `stream-direct`, `stream-proxy`. "Added" latency is a row minus its baseline at the same
//! connection count (`direct/N` for `proxy/N` and `sandbox/N`, `stream-direct/N` for
//! `stream-proxy/N`). Ends with the issue 2 targets, each marked PASS or MISS. Reads files only; it
//! does not run anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use quota_bench::report::LoadReport;

/// Issue 2: added p50 at 8 connections, µs.
const TARGET_ADDED_P50_US: i64 = 200;
/// Issue 2: added p99 at 8 connections, µs.
const TARGET_ADDED_P99_US: i64 = 1_000;
/// Issue 2: proxy-mode throughput at 64 connections.
const TARGET_PROXY_RPS: f64 = 10_000.0;
/// Issue 2: sandbox-mode throughput at 64 connections.
const TARGET_SANDBOX_RPS: f64 = 15_000.0;
/// A 1-connection keep-alive p50 above this smells of the delayed-ACK stall (~40 ms per request).
const DELAYED_ACK_SUSPECT_US: u64 = 10_000;

#[derive(Parser, Debug)]
#[command(about = "Print the benchmark table from loadgen JSON files")]
struct Args {
    /// `KIND/CONNECTIONS=FILE`, e.g. `proxy/8=/tmp/x/proxy-8.json`; repeatable, printed in order.
    #[arg(long = "row", required = true)]
    rows: Vec<String>,
    /// A line printed under the title (e.g. how processes were pinned).
    #[arg(long)]
    note: Vec<String>,
}

struct Row {
    kind: String,
    connections: usize,
    report: LoadReport,
}

fn main() {
    let args = Args::parse();
    match render(&args) {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("bench_report: {e:#}");
            std::process::exit(1);
        }
    }
}

fn load(spec: &str) -> Result<Row> {
    let (name, file) = spec.split_once('=').with_context(|| format!("--row {spec:?} is not KIND/CONNECTIONS=FILE"))?;
    let (kind, conns) =
        name.split_once('/').with_context(|| format!("--row {spec:?}: name is not KIND/CONNECTIONS"))?;
    if ![
        "direct",
        "proxy",
        "proxy-pg",
        "sandbox",
        "anthropic",
        "responses",
        "sandbox-webhooks",
        "stream-direct",
        "stream-proxy",
        "stream-anthropic",
    ]
    .contains(&kind)
    {
        bail!("--row {spec:?}: unknown kind {kind:?}");
    }
    let connections: usize = conns.parse().with_context(|| format!("--row {spec:?}: connections"))?;
    let path = PathBuf::from(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let report: LoadReport = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Row { kind: kind.to_string(), connections, report })
}

fn baseline_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "proxy" | "proxy-pg" | "sandbox" | "anthropic" | "responses" | "sandbox-webhooks" => Some("direct"),
        "stream-proxy" | "stream-anthropic" => Some("stream-direct"),
        _ => None,
    }
}

fn signed(v: i64) -> String {
    if v >= 0 {
        format!("+{v}")
    } else {
        v.to_string()
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn errors(r: &LoadReport) -> String {
    if r.errors_total == 0 {
        "0".to_string()
    } else {
        let parts: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("{} ({})", r.errors_total, parts.join(","))
    }
}

fn diff(a: u64, b: u64) -> i64 {
    i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(i64::MAX)
}

/// Formats rows as a table with columns padded to the widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths.get(i).copied().unwrap_or(0);
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn render(args: &Args) -> Result<String> {
    let rows: Vec<Row> = args.rows.iter().map(|s| load(s)).collect::<Result<_>>()?;
    let by_name: BTreeMap<(String, usize), &LoadReport> =
        rows.iter().map(|r| ((r.kind.clone(), r.connections), &r.report)).collect();
    let baseline = |row: &Row| -> Option<&LoadReport> {
        baseline_kind(&row.kind).and_then(|k| by_name.get(&(k.to_string(), row.connections)).copied())
    };

    let mut out = String::new();
    writeln!(out, "Quota benchmark (latencies in µs; 'added' = row − direct-to-mock at the same connection count)")?;
    for note in &args.note {
        writeln!(out, "{note}")?;
    }
    writeln!(out)?;

    let plain: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| !r.kind.starts_with("stream"))
        .map(|row| {
            let r = &row.report;
            let (added50, added99) = match baseline(row) {
                Some(b) => {
                    (signed(diff(r.latency_us.p50, b.latency_us.p50)), signed(diff(r.latency_us.p99, b.latency_us.p99)))
                }
                None => ("".to_string(), "".to_string()),
            };
            let (cpu, rss) = match &r.server {
                Some(s) => (format!("{:.1}", s.cpu_us_per_request), mib(s.vm_hwm_kib)),
                None => ("".to_string(), "".to_string()),
            };
            vec![
                row.kind.clone(),
                row.connections.to_string(),
                format!("{:.0}", r.rps),
                r.latency_us.p50.to_string(),
                r.latency_us.p99.to_string(),
                added50,
                added99,
                cpu,
                rss,
                errors(r),
            ]
        })
        .collect();
    if !plain.is_empty() {
        out.push_str(&table(
            &["row", "conns", "req/s", "p50", "p99", "added p50", "added p99", "CPU µs/req", "peak RSS MiB", "errors"],
            &plain,
        ));
        writeln!(out)?;
    }

    let streams: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| r.kind.starts_with("stream"))
        .map(|row| {
            let r = &row.report;
            let (ttft50, ttft99, gap99) = match baseline(row) {
                Some(b) => (
                    signed(diff(r.ttfb_us.p50, b.ttfb_us.p50)),
                    signed(diff(r.ttfb_us.p99, b.ttfb_us.p99)),
                    signed(diff(r.chunk_gap_us.p99, b.chunk_gap_us.p99)),
                ),
                None => ("".to_string(), "".to_string(), "".to_string()),
            };
            let rss = r.server.as_ref().map_or(String::new(), |s| mib(s.vm_hwm_kib));
            vec![
                row.kind.clone(),
                row.connections.to_string(),
                r.requests.to_string(),
                format!("{:.1}", r.frames_per_response),
                r.ttfb_us.p50.to_string(),
                r.ttfb_us.p99.to_string(),
                ttft50,
                ttft99,
                r.chunk_gap_us.p50.to_string(),
                r.chunk_gap_us.p99.to_string(),
                gap99,
                rss,
                errors(r),
            ]
        })
        .collect();
    if !streams.is_empty() {
        out.push_str(&table(
            &[
                "stream row",
                "conns",
                "streams",
                "frames/stream",
                "TTFT p50",
                "TTFT p99",
                "added TTFT p50",
                "added TTFT p99",
                "gap p50",
                "gap p99",
                "added gap p99",
                "peak RSS MiB",
                "errors",
            ],
            &streams,
        ));
        writeln!(out)?;
    }

    writeln!(out, "Targets (issue 2):")?;
    let mut check = |label: String, pass: Option<bool>| -> Result<()> {
        let verdict = match pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a (row missing)",
        };
        writeln!(out, "  [{verdict}] {label}")?;
        Ok(())
    };
    for kind in ["proxy", "sandbox"] {
        let added = by_name.get(&(kind.to_string(), 8)).zip(by_name.get(&("direct".to_string(), 8)));
        let (a50, a99) = match added {
            Some((r, b)) => {
                (Some(diff(r.latency_us.p50, b.latency_us.p50)), Some(diff(r.latency_us.p99, b.latency_us.p99)))
            }
            None => (None, None),
        };
        check(
            format!("{kind} @8 conns: added p50 {} ≤ {TARGET_ADDED_P50_US} µs", a50.map_or("?".into(), signed)),
            a50.map(|v| v <= TARGET_ADDED_P50_US),
        )?;
        check(
            format!("{kind} @8 conns: added p99 {} ≤ {TARGET_ADDED_P99_US} µs", a99.map_or("?".into(), signed)),
            a99.map(|v| v <= TARGET_ADDED_P99_US),
        )?;
    }
    for (kind, target) in [("proxy", TARGET_PROXY_RPS), ("sandbox", TARGET_SANDBOX_RPS)] {
        let rps = by_name.get(&(kind.to_string(), 64)).map(|r| r.rps);
        check(
            format!("{kind} @64 conns: {} req/s ≥ {target:.0}", rps.map_or("?".into(), |v| format!("{v:.0}"))),
            rps.map(|v| v >= target),
        )?;
    }
    for row in rows.iter().filter(|r| r.connections == 1) {
        let p50 = row.report.latency_us.p50;
        check(
            format!(
                "{} @1 conn keep-alive: p50 {p50} µs < {DELAYED_ACK_SUSPECT_US} µs (no delayed-ACK stall)",
                row.kind
            ),
            Some(p50 < DELAYED_ACK_SUSPECT_US),
        )?;
    }
    let failed: u64 = rows.iter().map(|r| r.report.errors_total).sum();
    check(format!("no failed request in any measured window ({failed} failed)"), Some(failed == 0))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_to_the_widest_cell() {
        let t = table(&["a", "bb"], &[vec!["xxx".into(), "1".into()]]);
        assert_eq!(t, "| a   | bb |\n|-----|----|\n| xxx |  1 |\n");
    }

    #[test]
    fn baselines_pair_modes_with_direct() {
        assert_eq!(baseline_kind("proxy"), Some("direct"));
        assert_eq!(baseline_kind("sandbox"), Some("direct"));
        assert_eq!(baseline_kind("proxy-pg"), Some("direct"));
        assert_eq!(baseline_kind("stream-proxy"), Some("stream-direct"));
        assert_eq!(baseline_kind("direct"), None);
    }

    #[test]
    fn signed_shows_the_sign() {
        assert_eq!(signed(5), "+5");
        assert_eq!(signed(0), "+0");
        assert_eq!(signed(-3), "-3");
    }
}
