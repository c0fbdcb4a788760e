//! `loadgen`: a closed-loop HTTP/1.1 keep-alive load generator for Quota's benchmark.
//!
//! `--connections N` connections each send one request, read the whole response, and send the next
//! (closed loop: the offered load follows the server's speed, as `wrk` does). The first
//! `--warmup-secs` are not measured; then `--duration-secs` are, and the run stops by itself. Prints
//! one JSON object ([`quota_bench::report::LoadReport`]): requests/s, latency percentiles (request
//! sent → last body byte), time to first body byte and gaps between body frames (time to first token
//! and inter-chunk latency on streams), errors by status. With `--watch-pid` it also charges that
//! process's CPU time over the measured window to the requests, and reads its peak RSS.
//!
//! Sockets get `TCP_NODELAY`. One runtime thread by default: pin it with `taskset`. Plain HTTP only;
//! not a general-purpose HTTP client (no TLS, no redirects, no HTTP/2).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use quota_bench::procfs;
use quota_bench::report::{new_histogram, record_us, LoadReport, Percentiles, ServerStats};
use tokio::net::TcpStream;

/// How long a failed connect waits before the next try, so a dead server is not hammered.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Grace after the last request's timeout before the whole run is abandoned.
const RUN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(about = "Closed-loop HTTP/1.1 keep-alive load generator (prints a JSON report)")]
struct Args {
    /// Target, `http://host:port/path`.
    #[arg(long)]
    url: String,
    /// Concurrent keep-alive connections, one request in flight on each.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Unmeasured warm-up before the window, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Extra request header `Name: value`; repeatable.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Request body, sent with every request (method POST unless `--method` says otherwise).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Request method; default POST with a body, GET without.
    #[arg(long)]
    method: Option<String>,
    /// One request's limit, connect to last byte, milliseconds; past it the request is an error.
    #[arg(long, default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// Count a 2xx response whose body lacks this text as an error (`body_mismatch`).
    #[arg(long)]
    expect_body: Option<String>,
    /// Measure this process's CPU time and peak RSS over the window (Linux /proc).
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Runtime worker threads; 1 runs everything on the calling thread (best when pinned to a core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// What every connection needs to build its requests.
struct Target {
    host_port: String,
    authority: HeaderValue,
    path: Uri,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    expect_body: Option<Vec<u8>>,
    request_timeout: Duration,
}

#[derive(Clone, Copy)]
struct Timing {
    measure_start: Instant,
    end: Instant,
}

/// One connection's tallies; merged at the end (no sharing on the hot path).
struct Tally {
    latency: Histogram<u64>,
    ttfb: Histogram<u64>,
    gaps: Histogram<u64>,
    ok: u64,
    all_phases: u64,
    frames: u64,
    body_bytes: u64,
    errors: BTreeMap<String, u64>,
    warmup_errors: u64,
    reconnects: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            latency: new_histogram(),
            ttfb: new_histogram(),
            gaps: new_histogram(),
            ok: 0,
            all_phases: 0,
            frames: 0,
            body_bytes: 0,
            errors: BTreeMap::new(),
            warmup_errors: 0,
            reconnects: 0,
        }
    }

    fn error(&mut self, measuring: bool, kind: &str) {
        if measuring {
            *self.errors.entry(kind.to_string()).or_insert(0) += 1;
        } else {
            self.warmup_errors += 1;
        }
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
        self.latency.add(&other.latency).context("merging histograms")?;
        self.ttfb.add(&other.ttfb).context("merging histograms")?;
        self.gaps.add(&other.gaps).context("merging histograms")?;
        self.ok += other.ok;
        self.all_phases += other.all_phases;
        self.frames += other.frames;
        self.body_bytes += other.body_bytes;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        self.warmup_errors += other.warmup_errors;
        self.reconnects += other.reconnects;
        Ok(())
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let runtime = quota_bench::runtime(args.threads)?;
    let report = runtime.block_on(drive(args))?;
    let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
    println!("{json}");
    Ok(())
}

fn parse_target(args: &Args) -> Result<Target> {
    let uri: Uri = args.url.parse().with_context(|| format!("--url {:?} is not a URL", args.url))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must start with http:// (no TLS here)");
    }
    let authority = uri.authority().context("--url has no host")?.as_str().to_string();
    let host_port = if uri.port_u16().is_some() { authority.clone() } else { format!("{authority}:80") };
    let path: Uri = uri.path_and_query().map_or("/", |pq| pq.as_str()).parse().context("request path")?;
    let body = match &args.body_file {
        Some(p) => Bytes::from(std::fs::read(p).with_context(|| format!("reading --body-file {}", p.display()))?),
        None => Bytes::new(),
    };
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.as_bytes()).with_context(|| format!("--method {m:?}"))?,
        None if args.body_file.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let (name, value) = h.split_once(':').with_context(|| format!("--header {h:?} is not `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).with_context(|| format!("header name in {h:?}"))?;
        let value = HeaderValue::from_str(value.trim()).with_context(|| format!("header value in {h:?}"))?;
        headers.push((name, value));
    }
    if !body.is_empty() && !headers.iter().any(|(n, _)| n == CONTENT_TYPE) {
        headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
    }
    Ok(Target {
        host_port,
        authority: HeaderValue::from_str(&authority).context("host header")?,
        path,
        method,
        headers,
        body,
        expect_body: args.expect_body.as_ref().map(|s| s.as_bytes().to_vec()),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
    })
}

fn secs(s: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{flag} {s} is not a duration"))
}

async fn drive(args: Args) -> Result<LoadReport> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let target = Arc::new(parse_target(&args)?);
    let warmup = secs(args.warmup_secs, "--warmup-secs")?;
    let window = secs(args.duration_secs, "--duration-secs")?;
    if window.is_zero() {
        bail!("--duration-secs must be positive");
    }
    let start = Instant::now();
    let timing = Timing { measure_start: start + warmup, end: start + warmup + window };

    // The watched process is sampled at the window's edges, on the same clock as the requests.
    let sampler = args.watch_pid.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(timing.measure_start.into()).await;
            let before = procfs::cpu_ticks(pid);
            tokio::time::sleep_until(timing.end.into()).await;
            let after = procfs::cpu_ticks(pid);
            let memory = procfs::memory_kib(pid);
            (pid, before, after, memory)
        })
    });

    let workers: Vec<_> =
        (0..args.connections).map(|_| tokio::spawn(connection_loop(target.clone(), timing))).collect();
    let deadline = timing.end + target.request_timeout + RUN_GRACE;
    let mut total = Tally::new();
    for worker in workers {
        match tokio::time::timeout_at(deadline.into(), worker).await {
            Ok(Ok(tally)) => total.merge(tally)?,
            Ok(Err(e)) => bail!("a connection task failed: {e}"),
            Err(_) => bail!("the run did not finish within its deadline"),
        }
    }

    let requests = total.ok;
    let server = match sampler {
        None => None,
        Some(handle) => {
            let (pid, before, after, memory) = handle.await.context("sampler task")?;
            let ticks = after?.saturating_sub(before?);
            let cpu_us = ticks * 1_000_000 / args.clk_tck.max(1);
            let (vm_hwm_kib, vm_rss_kib) = memory?;
            Some(ServerStats {
                pid,
                cpu_us,
                cpu_us_per_request: if requests == 0 {
                    0.0
                } else {
                    (cpu_us as f64 / requests as f64 * 10.0).round() / 10.0
                },
                vm_hwm_kib,
                vm_rss_kib,
            })
        }
    };
    let errors_total = total.errors.values().sum();
    let report = LoadReport {
        url: args.url.clone(),
        connections: args.connections,
        warmup_secs: args.warmup_secs,
        window_secs: args.duration_secs,
        requests,
        requests_all_phases: total.all_phases,
        rps: (requests as f64 / args.duration_secs).round(),
        errors_total,
        errors: total.errors,
        warmup_errors: total.warmup_errors,
        reconnects: total.reconnects,
        latency_us: Percentiles::of(&total.latency),
        ttfb_us: Percentiles::of(&total.ttfb),
        chunk_gap_us: Percentiles::of(&total.gaps),
        frames_per_response: if requests == 0 {
            0.0
        } else {
            (total.frames as f64 / requests as f64 * 100.0).round() / 100.0
        },
        body_bytes: total.body_bytes,
        server,
    };
    eprintln!(
        "loadgen: {} c={} rps={} p50={}us p99={}us errors={} ({:?})",
        report.url,
        report.connections,
        report.rps,
        report.latency_us.p50,
        report.latency_us.p99,
        report.errors_total,
        report.errors
    );
    Ok(report)
}

async fn connect(target: &Target) -> Result<SendRequest<Full<Bytes>>> {
    let stream =
        TcpStream::connect(&target.host_port).await.with_context(|| format!("connecting to {}", target.host_port))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        // Ends when the server closes or the sender is dropped; either is handled by the loop.
        let _ = conn.await;
    });
    Ok(sender)
}

fn build_request(target: &Target) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(target.body.clone()));
    *req.method_mut() = target.method.clone();
    *req.uri_mut() = target.path.clone();
    let headers = req.headers_mut();
    headers.insert(HOST, target.authority.clone());
    for (name, value) in &target.headers {
        headers.append(name.clone(), value.clone());
    }
    req
}

/// What one exchange produced.
struct Exchange {
    status: u16,
    latency_us: u64,
    ttfb_us: Option<u64>,
    frames: u64,
    body_bytes: u64,
    body_matched: bool,
}

async fn exchange(sender: &mut SendRequest<Full<Bytes>>, target: &Target, gaps: &mut Vec<u64>) -> Result<Exchange> {
    gaps.clear();
    let req = build_request(target);
    sender.ready().await.context("connection not ready")?;
    let t0 = Instant::now();
    let response = sender.send_request(req).await.context("sending")?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut ttfb_us = None;
    let mut last = t0;
    let mut frames = 0;
    let mut body_bytes = 0;
    let mut kept: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the body")?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        let now = Instant::now();
        if ttfb_us.is_none() {
            ttfb_us = Some(micros(now - t0));
        } else {
            gaps.push(micros(now - last));
        }
        last = now;
        frames += 1;
        body_bytes += data.len() as u64;
        if target.expect_body.is_some() {
            kept.extend_from_slice(&data);
        }
    }
    let latency_us = micros(t0.elapsed());
    let body_matched = match &target.expect_body {
        None => true,
        Some(needle) => !needle.is_empty() && kept.windows(needle.len()).any(|w| w == &needle[..]),
    };
    Ok(Exchange { status, latency_us, ttfb_us, frames, body_bytes, body_matched })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn connection_loop(target: Arc<Target>, timing: Timing) -> Tally {
    let mut tally = Tally::new();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut gaps = Vec::new();
    let mut opened_once = false;
    loop {
        let started = Instant::now();
        if started >= timing.end {
            break;
        }
        let measuring = started >= timing.measure_start;
        let live = match sender.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => {
                if opened_once {
                    tally.reconnects += 1;
                }
                sender = None;
                match tokio::time::timeout(target.request_timeout, connect(&target)).await {
                    Ok(Ok(s)) => {
                        opened_once = true;
                        sender.insert(s)
                    }
                    Ok(Err(_)) | Err(_) => {
                        tally.error(measuring, "connect");
                        tokio::time::sleep(RECONNECT_BACKOFF).await;
                        continue;
                    }
                }
            }
        };
        let outcome = tokio::time::timeout(target.request_timeout, exchange(live, &target, &mut gaps)).await;
        let ex = match outcome {
            Ok(Ok(ex)) => ex,
            Ok(Err(_)) => {
                tally.error(measuring, "io");
                sender = None;
                continue;
            }
            Err(_) => {
                tally.error(measuring, "timeout");
                sender = None;
                continue;
            }
        };
        tally.all_phases += 1;
        if !(200..300).contains(&ex.status) {
            tally.error(measuring, &ex.status.to_string());
            continue;
        }
        if !ex.body_matched {
            tally.error(measuring, "body_mismatch");
            continue;
        }
        if measuring {
            tally.ok += 1;
            tally.frames += ex.frames;
            tally.body_bytes += ex.body_bytes;
            record_us(&mut tally.latency, ex.latency_us);
            if let Some(t) = ex.ttfb_us {
                record_us(&mut tally.ttfb, t);
            }
            for &g in &gaps {
                record_us(&mut tally.gaps, g);
            }
        }
    }
    tally
}
