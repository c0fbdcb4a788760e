//! Logs and traces (SPEC §12): the process's `tracing` subscriber (text or JSON on stderr,
//! colour only on a terminal, filtered by `QUOTA_LOG`), the access log (one line per request,
//! target `quota::access`, written when its body ends) and, with `otlp_endpoint`, an
//! OpenTelemetry export over OTLP/HTTP of each request's span and its phases (`limit`,
//! `reserve`, `upstream` with `time_to_first_byte_ms`, `settle`).
//!
//! Zero cost when off: the request and phase spans are at DEBUG, so under the default filter
//! (and without `otlp_endpoint`) they are disabled callsites — no span is built, nothing
//! allocated; the access log is skipped entirely when its target is filtered out
//! (`QUOTA_LOG=info,quota::access=off`). Not here: metrics (`crate::metrics`).

use crate::config::Config;
use crate::request_id::RequestId;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use parking_lot::Mutex;
use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::{Instrument, Level};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The access log's `tracing` target.
pub const ACCESS_TARGET: &str = "quota::access";

/// The installed subscriber's exporter, flushed at shutdown.
#[must_use = "keep it, and call shutdown() to flush the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Export what is still buffered (blocks: call from a blocking thread).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("OTLP export: {e}");
            }
        }
    }
}

/// Install the process-wide subscriber (once; later calls keep the first).
pub fn init(config: &Config) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_env("QUOTA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let fmt: Box<dyn Layer<Registry> + Send + Sync> =
        if config.log_format == "json" { fmt.json().boxed() } else { fmt.boxed() };
    let provider = match config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => Some(otlp_provider(endpoint)?),
        None => None,
    };
    // Only Quota's own spans are exported (DEBUG: the request and its phases), whatever
    // QUOTA_LOG says the log shows.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("quota"))
            .with_filter(Targets::new().with_target("quota_server", Level::DEBUG))
    });
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init();
    Ok(Telemetry { provider })
}

fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("otlp_endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("quota").build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// What the access log learns during a request that the HTTP layer cannot see.
#[derive(Default)]
struct Note {
    key_id: Option<String>,
    model: Option<String>,
    credits: i64,
}

/// One request's trace span and access-log note, in its extensions for the phases to use.
/// Both are empty (and free) when neither traces nor the access log are on.
#[derive(Clone)]
pub struct Exchange {
    span: tracing::Span,
    note: Option<Arc<Mutex<Note>>>,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange { span: tracing::Span::none(), note: None }
    }
}

impl Exchange {
    /// The request's span: the parent of phases that run outside it (a stream's settlement).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The key, model and credits charged, for the access log line.
    pub fn note_charge(&self, key_id: Option<&str>, model: &str, credits: i64) {
        if let Some(note) = &self.note {
            let mut n = note.lock();
            n.key_id = key_id.map(str::to_owned);
            n.model = Some(model.to_owned());
            n.credits = credits;
        }
    }
}

/// Tower layer body: the request span (with the request id, so every span and log line inside
/// it carries it) and the access-log line, written when the response body ends or is dropped.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let log = tracing::enabled!(target: ACCESS_TARGET, Level::INFO);
    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or("unmatched");
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.as_str()).unwrap_or("");
    let span = tracing::debug_span!("request", request_id, method = %req.method(), route);
    if !log && span.is_disabled() {
        return next.run(req).await;
    }
    let line = log.then(|| AccessLine {
        started: Instant::now(),
        method: req.method().to_string(),
        route: route.to_string(),
        request_id: request_id.to_string(),
        status: 0,
        note: Arc::default(),
    });
    let note = line.as_ref().map(|l| l.note.clone());
    req.extensions_mut().insert(Exchange { span: span.clone(), note });
    let resp = next.run(req).instrument(span).await;
    let Some(mut line) = line else { return resp };
    line.status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::new(LoggedBody { inner: body, bytes: 0, line: Some(line) }))
}

struct AccessLine {
    started: Instant,
    method: String,
    route: String,
    request_id: String,
    status: u16,
    note: Arc<Mutex<Note>>,
}

impl AccessLine {
    fn write(self, bytes: u64) {
        let note = self.note.lock();
        let latency_ms = self.started.elapsed().as_micros() as f64 / 1000.0;
        tracing::info!(
            target: ACCESS_TARGET,
            method = %self.method,
            route = %self.route,
            status = self.status,
            latency_ms,
            bytes,
            request_id = %self.request_id,
            key_id = note.key_id.as_deref().unwrap_or("-"),
            model = note.model.as_deref().unwrap_or("-"),
            credits = note.credits,
            "request"
        );
    }
}

/// A response body that counts what it sends and writes the access line when it ends.
struct LoggedBody {
    inner: Body,
    bytes: u64,
    line: Option<AccessLine>,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            line.write(self.bytes);
        }
    }
}
