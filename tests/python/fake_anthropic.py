"""A fake Anthropic upstream for Quota's end-to-end tests.

It speaks Anthropic's published Messages API wire format on 127.0.0.1: ``POST /v1/messages``
answers a ``message`` body whose ``usage`` has ``input_tokens`` (cache reads and writes excluded),
``cache_read_input_tokens``, ``cache_creation_input_tokens`` and ``output_tokens``; with
``"stream": true`` it sends the event stream (``message_start``, ``content_block_start`` /
``_delta`` / ``_stop`` per block, ``ping``, ``message_delta`` with the final output count,
``message_stop``). Errors are ``{"type": "error", "error": {"type", "message"}}``.

Recording and scripting are :class:`fake_openai.FakeOpenAI`'s (``push``, ``requests``,
``wait_for_requests``); replies are :class:`Reply` objects of this module.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fake_openai import FakeOpenAI, Recorded, _Handler, _lower


@dataclasses.dataclass
class Usage:
    input_tokens: int = 120
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int = 30

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Reply:
    status: int = 200
    error_type: str = "api_error"
    error_message: str = "Internal server error"
    # Content blocks: {"type": "text", "text"} or {"type": "tool_use", "id", "name", "input"}.
    content: tuple[dict, ...] = ({"type": "text", "text": "Hello from the fake Claude."},)
    stop_reason: str = "end_turn"
    usage: Usage = dataclasses.field(default_factory=Usage)
    model: str = "claude-sonnet-4-5-20250929"


class FakeAnthropic(FakeOpenAI):
    def __init__(self) -> None:
        super().__init__(_AnthropicHandler, Reply())

    @property
    def base_url(self) -> str:
        """What Quota's ``QUOTA_ANTHROPIC_BASE_URL`` should be (the API root)."""
        return f"http://127.0.0.1:{self.port}"


class _AnthropicHandler(_Handler):
    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        body = self._read_body()
        self.owner._record(Recorded("POST", self.path, _lower(self.headers), body))
        reply: Reply = self.owner._next_reply()
        if self.path != "/v1/messages":
            self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "Not found"}})
            return
        if reply.status != 200:
            self._send_json(
                reply.status, {"type": "error", "error": {"type": reply.error_type, "message": reply.error_message}}
            )
            return
        request = json.loads(body)
        message = {
            "id": "msg_fake0001",
            "type": "message",
            "role": "assistant",
            "model": reply.model,
            "content": list(reply.content),
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": reply.usage.to_json(),
        }
        if not request.get("stream"):
            self._send_json(200, message)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        start_usage = dict(reply.usage.to_json(), output_tokens=1)
        self._event({"type": "message_start", "message": dict(message, content=[], stop_reason=None, usage=start_usage)})
        for i, block in enumerate(reply.content):
            if block["type"] == "tool_use":
                self._event({"type": "content_block_start", "index": i, "content_block": dict(block, input={})})
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            else:
                self._event({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
                delta = {"type": "text_delta", "text": block["text"]}
            self._event({"type": "ping"})
            self._event({"type": "content_block_delta", "index": i, "delta": delta})
            self._event({"type": "content_block_stop", "index": i})
        self._event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": reply.usage.output_tokens},
            }
        )
        self._event({"type": "message_stop"})
        self._send_chunk(b"")

    def _event(self, payload: dict[str, Any]) -> None:
        self._send_chunk(f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode())
