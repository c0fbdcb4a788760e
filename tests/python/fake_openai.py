"""A fake OpenAI upstream for Quota's end-to-end tests.

It speaks OpenAI's published Chat Completions wire format on 127.0.0.1 (port picked by the OS):

* ``POST /v1/chat/completions`` answers a ``chat.completion`` JSON body with ``usage`` (including
  ``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``), or,
  when the request says ``"stream": true``, Server-Sent Events over HTTP/1.1 chunked encoding:
  a role chunk, one chunk per content piece, a finish chunk, then (only when the request asked
  ``stream_options.include_usage``) a usage chunk with ``choices: []``, then ``data: [DONE]``.
  As OpenAI does, every chunk carries ``"usage": null`` when usage was requested.
* ``POST /v1/responses`` answers a Responses API ``response`` object (usage as
  ``input_tokens`` with ``input_tokens_details.cached_tokens`` and ``output_tokens`` with
  ``output_tokens_details.reasoning_tokens``), or, streaming, OpenAI's typed events with
  ``event:`` names and ``sequence_number``s: ``response.created``, ``response.in_progress``,
  ``response.output_item.added``, ``response.content_part.added``, one
  ``response.output_text.delta`` per piece, ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done``, ``response.completed``.
* ``POST /v1/embeddings`` answers ``{"object": "list", "data": [{"object": "embedding", "index",
  "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}``; the vectors are floats, or
  base64 of little-endian float32s when the request says ``encoding_format: "base64"``.
* Errors are OpenAI error objects: ``{"error": {"message", "type", "param", "code"}}``.

Every request is recorded (method, path, headers, raw body, parsed JSON) before it is answered, so
tests can assert on exactly what Quota sent upstream. Behaviour is scripted per test with
:meth:`FakeOpenAI.push` (one :class:`Reply` per upcoming request, in order); with nothing
scripted, the :attr:`FakeOpenAI.default` reply is used. Handlers blocked on a scripted gate are
released by :meth:`FakeOpenAI.close`.

Only the standard library is used.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Longest a scripted "hold the headers back" may block a handler thread: far longer than any
# gateway timeout the tests configure, and released at once by close().
GATE_MAX_WAIT_SECS = 30.0


@dataclasses.dataclass
class Usage:
    """OpenAI's usage numbers. ``prompt_tokens`` includes ``cached_tokens``; ``completion_tokens``
    includes ``reasoning_tokens`` (that is how OpenAI reports them)."""

    prompt_tokens: int = 1234
    completion_tokens: int = 345
    cached_tokens: int = 1000
    reasoning_tokens: int = 45

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


@dataclasses.dataclass
class Reply:
    """How the fake answers one request."""

    # Non-2xx: answer this status with an OpenAI error object built from the fields below.
    status: int = 200
    error_message: str = "The server had an error while processing your request."
    error_type: str = "server_error"
    error_code: str | None = None
    # A successful answer: the assistant text, streamed as these pieces (joined when not streaming).
    pieces: tuple[str, ...] = ("Hello", " from", " the", " fake", " upstream", ".")
    usage: Usage = dataclasses.field(default_factory=Usage)
    # The model name in the answer; None echoes the request's model (OpenAI answers a snapshot id).
    model: str | None = None
    # Hold the response headers back until this event is set (or GATE_MAX_WAIT_SECS passed).
    hold_headers: threading.Event | None = None
    # Streams only: drop the connection (no usage chunk, no [DONE], no chunked terminator) after
    # this many content pieces were sent.
    close_after_pieces: int | None = None
    # Streams only: after this many content pieces, wait until `resume` is set (or
    # GATE_MAX_WAIT_SECS passed) before sending the rest.
    pause_after_pieces: int | None = None
    resume: threading.Event | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeOpenAI:
    """The OpenAI fake; also the base of the Anthropic and Gemini fakes, which bring their own
    request handler (a subclass of ``_Handler``) and reply type."""

    def __init__(self, handler: type | None = None, default: Any = None) -> None:
        self.default = default if default is not None else Reply()
        self._script: collections.deque[Reply] = collections.deque()
        self._requests: list[Recorded] = []
        self._cond = threading.Condition()
        self._gates: list[threading.Event] = []
        self._completion_seq = 0
        fake = self

        class Handler(handler or _Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-openai", daemon=True
        )
        self._thread.start()

    # --- scripting -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What Quota's ``QUOTA_OPENAI_BASE_URL`` should be."""
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *replies: Reply) -> None:
        """Script the next requests' replies, in order."""
        with self._cond:
            for r in replies:
                for gate in (getattr(r, "hold_headers", None), getattr(r, "resume", None)):
                    if gate is not None:
                        self._gates.append(gate)
                self._script.append(r)

    def _next_reply(self) -> Any:
        with self._cond:
            return self._script.popleft() if self._script else self.default

    # --- recording -------------------------------------------------------------------------

    def _record(self, rec: Recorded) -> None:
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()

    @property
    def requests(self) -> list[Recorded]:
        with self._cond:
            return list(self._requests)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[Recorded]:
        """Block until at least ``n`` requests were recorded; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the fake upstream received {len(self._requests)} requests, expected {n}"
                    )
                self._cond.wait(left)
            return list(self._requests)

    def next_completion_id(self) -> str:
        with self._cond:
            self._completion_seq += 1
            return f"chatcmpl-fake{self._completion_seq:06d}"

    def close(self) -> None:
        with self._cond:
            for g in self._gates:
                g.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # --- plumbing --------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", "req_fake_upstream")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _sse(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._send_chunk(f"data: {text}\n\n".encode())

    # --- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.owner._record(Recorded("GET", self.path, _lower(self.headers), b""))
        self._send_json(404, _error_body("Unknown route", "invalid_request_error", None))

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        body = self._read_body()
        self.owner._record(Recorded("POST", self.path, _lower(self.headers), body))
        if self.path not in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings"):
            self._send_json(404, _error_body("Unknown route", "invalid_request_error", None))
            return
        reply = self.owner._next_reply()
        if reply.hold_headers is not None:
            reply.hold_headers.wait(GATE_MAX_WAIT_SECS)
        try:
            request = json.loads(body)
        except ValueError:
            self._send_json(400, _error_body("We could not parse the JSON body.", "invalid_request_error", None))
            return
        if reply.status != 200:
            self._send_json(
                reply.status, _error_body(reply.error_message, reply.error_type, reply.error_code)
            )
            return
        model = reply.model or request.get("model", "gpt-4o-mini")
        cid = self.owner.next_completion_id()
        created = int(time.time())
        if self.path == "/v1/embeddings":
            self._send_json(200, _embeddings(request, reply, model))
            return
        if self.path == "/v1/responses":
            if request.get("stream"):
                self._stream_response(reply, cid, created, model)
            else:
                self._send_json(200, _response(reply, cid, created, model, "completed"))
            return
        if request.get("stream"):
            try:
                self._stream(request, reply, cid, created, model)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # Quota went away first: nothing to do
        else:
            self._send_json(200, _completion(reply, cid, created, model))

    def _stream(self, request: dict, reply: Reply, cid: str, created: int, model: str) -> None:
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.end_headers()

        def chunk(delta: dict, finish: str | None) -> dict:
            c = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                c["usage"] = None
            return c

        self._sse(chunk({"role": "assistant", "content": "", "refusal": None}, None))
        for i, piece in enumerate(reply.pieces):
            if reply.close_after_pieces is not None and i >= reply.close_after_pieces:
                self._drop()
                return
            if i == reply.pause_after_pieces and reply.resume is not None:
                reply.resume.wait(GATE_MAX_WAIT_SECS)
            self._sse(chunk({"content": piece}, None))
        if reply.close_after_pieces is not None:
            self._drop()
            return
        self._sse(chunk({}, "stop"))
        if include_usage:
            self._sse(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "service_tier": "default",
                    "system_fingerprint": "fp_fake",
                    "choices": [],
                    "usage": reply.usage.to_json(),
                }
            )
        self._sse("[DONE]")
        self._send_chunk(b"")  # the chunked-encoding terminator

    def _stream_response(self, reply: Reply, cid: str, created: int, model: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        seq = 0

        def event(kind: str, data: dict) -> None:
            nonlocal seq
            data = {"type": kind, "sequence_number": seq, **data}
            seq += 1
            self._send_chunk(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

        pending = _response(reply, cid, created, model, "in_progress")
        item = pending["output"][0]
        pending["output"] = []  # as OpenAI's: items arrive with response.output_item.added
        at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        event("response.created", {"response": pending})
        event("response.in_progress", {"response": pending})
        event("response.output_item.added", {"output_index": 0, "item": {**item, "content": [], "status": "in_progress"}})
        event("response.content_part.added", {**at, "part": {"type": "output_text", "text": "", "annotations": []}})
        for piece in reply.pieces:
            event("response.output_text.delta", {**at, "delta": piece, "logprobs": []})
        event("response.output_text.done", {**at, "text": reply.text, "logprobs": []})
        done = _response(reply, cid, created, model, "completed")
        event("response.content_part.done", {**at, "part": done["output"][0]["content"][0]})
        event("response.output_item.done", {"output_index": 0, "item": done["output"][0]})
        event("response.completed", {"response": done})
        self._send_chunk(b"")

    def _drop(self) -> None:
        """Close the connection abruptly, in the middle of the chunked body."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _error_body(message: str, type_: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _completion(reply: Reply, cid: str, created: int, model: str) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": reply.usage.to_json(),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _response(reply: Reply, cid: str, created: int, model: str, status: str) -> dict:
    u = reply.usage
    done = status == "completed"
    return {
        "id": "resp_" + cid.removeprefix("chatcmpl-"),
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_" + cid.removeprefix("chatcmpl-"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply.text, "annotations": []}] if done else [],
            }
        ],
        "usage": {
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        }
        if done
        else None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "text": {"format": {"type": "text"}},
    }


def _embeddings(request: dict, reply: Reply, model: str) -> dict:
    import base64
    import struct

    inputs = request.get("input")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    dims = int(request.get("dimensions") or 8)
    data = []
    for i, _ in enumerate(inputs):
        vec = [((i + 1) * (j + 1)) % 7 / 7.0 for j in range(dims)]
        if request.get("encoding_format") == "base64":
            emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
        else:
            emb = vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = reply.usage.prompt_tokens
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": n, "total_tokens": n}}
