//! `mock_upstream`: a mock OpenAI upstream for Quota's benchmark, fast enough not to be the bottleneck.
//!
//! `POST /v1/chat/completions` answers a fixed `chat.completion` (with `usage`) in one write; with
//! `"stream": true` in the body it answers OpenAI SSE: `--chunks` content chunks `--chunk-delay-ms`
//! apart, the `finish_reason` chunk, a usage chunk with `choices: []` when the request set
//! `stream_options.include_usage`, then `data: [DONE]`. Requests without an `Authorization` header
//! get OpenAI's 401, so a gateway that forgets the provider key fails loudly. `GET /stats` returns
//! how many completions were served (the bench uses it to prove proxy mode reached the upstream).
//! `POST /v1/responses` answers a fixed Responses API `response` the same way (non-streaming).
//! `POST /hook` is a webhook receiver: it reads the body, answers 200 and counts deliveries with
//! the first and last arrival times (`hooks`, `hooks_first_us`, `hooks_last_us` in `/stats`).
//!
//! Every accepted socket gets `TCP_NODELAY`; answers are rendered once at start-up. Loopback only.
//! Not a general OpenAI emulator: the answer does not depend on the request beyond `stream`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use quota_bench::mock::{anthropic_message_body, completion_body, json_flag_is_true, response_body, SseFrames};
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// Largest request body the mock reads; bigger ones get 413.
const REQUEST_BODY_MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(about = "Mock OpenAI upstream for Quota's benchmark (loopback only)")]
struct Args {
    /// Port on 127.0.0.1; 0 lets the OS pick one (printed on start).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Content chunks per streamed answer.
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Delay between two streamed chunks, milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Delay before the first streamed chunk (upstream time to first token), milliseconds.
    #[arg(long, default_value_t = 0)]
    first_chunk_delay_ms: u64,
    /// Runtime worker threads; 1 runs everything on the calling thread (best when pinned to a core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

struct State {
    completion: Bytes,
    response: Bytes,
    sse: Arc<SseFrames>,
    message: Bytes,
    anthropic_sse: Arc<SseFrames>,
    chunk_delay: Duration,
    first_chunk_delay: Duration,
    completions_served: AtomicU64,
    streams_served: AtomicU64,
    hooks_received: AtomicU64,
    /// Unix microseconds of the first and the latest webhook delivery (0: none yet).
    hooks_first_us: AtomicU64,
    hooks_last_us: AtomicU64,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("mock_upstream: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let runtime = quota_bench::runtime(args.threads)?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let port = listener.local_addr().context("local address")?.port();
    let state = Arc::new(State {
        completion: completion_body(),
        response: response_body(),
        sse: Arc::new(SseFrames::new(args.chunks)),
        message: anthropic_message_body(),
        anthropic_sse: Arc::new(SseFrames::anthropic(args.chunks)),
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        first_chunk_delay: Duration::from_millis(args.first_chunk_delay_ms),
        completions_served: AtomicU64::new(0),
        streams_served: AtomicU64::new(0),
        hooks_received: AtomicU64::new(0),
        hooks_first_us: AtomicU64::new(0),
        hooks_last_us: AtomicU64::new(0),
    });
    println!("mock listening on http://127.0.0.1:{port}");
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("mock_upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            eprintln!("mock_upstream: TCP_NODELAY: {e}");
        }
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            // writev(false): headers and a small body are flattened into one buffer, one write().
            let conn =
                http1::Builder::new().writev(false).keep_alive(true).serve_connection(TokioIo::new(stream), service);
            // A peer that resets the connection is normal at the end of a run.
            let _ = conn.await;
        });
    }
}

/// A webhook delivery: read it, count it, answer 200.
async fn hook(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    if Limited::new(req.into_body(), REQUEST_BODY_MAX_BYTES).collect().await.is_err() {
        return openai_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large", "invalid_request_error");
    }
    let now_us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
    let _ = state.hooks_first_us.compare_exchange(0, now_us, Ordering::Relaxed, Ordering::Relaxed);
    state.hooks_last_us.fetch_max(now_us, Ordering::Relaxed);
    state.hooks_received.fetch_add(1, Ordering::Relaxed);
    json_response(StatusCode::OK, Bytes::from_static(b"{}"))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    let path = req.uri().path();
    let response = match (req.method(), path) {
        (&Method::POST, "/v1/chat/completions") => chat_completions(&state, req).await,
        (&Method::POST, "/v1/messages") => messages(&state, req).await,
        (&Method::POST, "/v1/responses") => responses(&state, req).await,
        (&Method::POST, "/hook") => hook(&state, req).await,
        (&Method::GET, "/stats") => json_response(
            StatusCode::OK,
            Bytes::from(format!(
                "{{\"completions\":{},\"streams\":{},\"hooks\":{},\"hooks_first_us\":{},\"hooks_last_us\":{}}}",
                state.completions_served.load(Ordering::Relaxed),
                state.streams_served.load(Ordering::Relaxed),
                state.hooks_received.load(Ordering::Relaxed),
                state.hooks_first_us.load(Ordering::Relaxed),
                state.hooks_last_us.load(Ordering::Relaxed)
            )),
        ),
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, Bytes::from_static(b"{}")),
        _ => openai_error(StatusCode::NOT_FOUND, "Unknown request URL", "invalid_request_error"),
    };
    Ok(response)
}

async fn chat_completions(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    if !req.headers().contains_key(AUTHORIZATION) {
        return openai_error(StatusCode::UNAUTHORIZED, "You didn't provide an API key.", "invalid_request_error");
    }
    answer(state, req, &state.completion, &state.sse).await
}

/// OpenAI's Responses API (non-streaming in the bench).
async fn responses(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    if !req.headers().contains_key(AUTHORIZATION) {
        return openai_error(StatusCode::UNAUTHORIZED, "You didn't provide an API key.", "invalid_request_error");
    }
    answer(state, req, &state.response, &state.sse).await
}

/// Anthropic's Messages API: the key comes in `x-api-key`.
async fn messages(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    if !req.headers().contains_key("x-api-key") {
        return openai_error(StatusCode::UNAUTHORIZED, "x-api-key header is required", "authentication_error");
    }
    answer(state, req, &state.message, &state.anthropic_sse).await
}

/// The canned `body`, or the paced `frames` when the request says `"stream": true`.
async fn answer(state: &State, req: Request<Incoming>, body: &Bytes, frames: &Arc<SseFrames>) -> Response<MockBody> {
    let request = match Limited::new(req.into_body(), REQUEST_BODY_MAX_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return openai_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body unreadable or too large.",
                "invalid_request_error",
            )
        }
    };
    if json_flag_is_true(&request, "stream") {
        state.streams_served.fetch_add(1, Ordering::Relaxed);
        let sse = SseBody {
            frames: frames.clone(),
            next: 0,
            with_usage: json_flag_is_true(&request, "include_usage"),
            first_delay: state.first_chunk_delay,
            delay: state.chunk_delay,
            sleep: None,
        };
        let mut response = Response::new(MockBody::Sse(sse));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        state.completions_served.fetch_add(1, Ordering::Relaxed);
        json_response(StatusCode::OK, body.clone())
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<MockBody> {
    let mut response = Response::new(MockBody::Once(Some(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn openai_error(status: StatusCode, message: &str, kind: &str) -> Response<MockBody> {
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": null}
    });
    json_response(status, Bytes::from(body.to_string()))
}

/// A response body: either one buffer, or a paced SSE stream.
enum MockBody {
    Once(Option<Bytes>),
    Sse(SseBody),
}

struct SseBody {
    frames: Arc<SseFrames>,
    /// Index of the next frame: `0..content.len()` are content chunks, `content.len()` the tail.
    next: usize,
    with_usage: bool,
    first_delay: Duration,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl SseBody {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let content = self.frames.content.len();
        if self.next > content {
            return Poll::Ready(None);
        }
        let delay = if self.next == 0 { self.first_delay } else { self.delay };
        if !delay.is_zero() {
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let frame = if self.next < content {
            self.frames.content[self.next].clone()
        } else if self.with_usage {
            self.frames.tail_with_usage.clone()
        } else {
            self.frames.tail_without_usage.clone()
        };
        self.next += 1;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            MockBody::Once(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Sse(sse) => sse.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Once(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Once(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Once(None) => SizeHint::with_exact(0),
            MockBody::Sse(_) => SizeHint::default(),
        }
    }
}
