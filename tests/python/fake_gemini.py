"""A fake Google Gemini upstream for Quota's end-to-end tests.

It speaks the published Gemini API wire format on 127.0.0.1:
``POST /v1beta/models/{model}:generateContent`` answers a ``GenerateContentResponse`` whose
``usageMetadata`` has ``promptTokenCount`` (cached tokens included), ``cachedContentTokenCount``,
``candidatesTokenCount`` and ``thoughtsTokenCount`` (not inside the candidates count);
``:streamGenerateContent?alt=sse`` sends one ``data:`` chunk per part, ``\\r\\n\\r\\n``-separated,
each with ``usageMetadata`` and the last with ``finishReason``. Errors are
``{"error": {"code", "message", "status"}}``.

Recording and scripting are :class:`fake_openai.FakeOpenAI`'s; replies are :class:`Reply`
objects of this module.
"""

from __future__ import annotations

import dataclasses
import json

from fake_openai import FakeOpenAI, Recorded, _Handler, _lower


@dataclasses.dataclass
class Usage:
    prompt: int = 200
    cached: int = 0
    candidates: int = 20
    thoughts: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "promptTokenCount": self.prompt,
            "cachedContentTokenCount": self.cached,
            "candidatesTokenCount": self.candidates,
            "thoughtsTokenCount": self.thoughts,
            "totalTokenCount": self.prompt + self.candidates + self.thoughts,
        }


@dataclasses.dataclass
class Reply:
    status: int = 200
    error_status: str = "INTERNAL"
    error_message: str = "Internal error encountered."
    # Parts: {"text"} or {"functionCall": {"name", "args"}}.
    parts: tuple[dict, ...] = ({"text": "Hello "}, {"text": "from the fake Gemini."})
    finish_reason: str = "STOP"
    usage: Usage = dataclasses.field(default_factory=Usage)


class FakeGemini(FakeOpenAI):
    def __init__(self) -> None:
        super().__init__(_GeminiHandler, Reply())

    @property
    def base_url(self) -> str:
        """What Quota's ``QUOTA_GOOGLE_BASE_URL`` should be (the API root)."""
        return f"http://127.0.0.1:{self.port}"


class _GeminiHandler(_Handler):
    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        body = self._read_body()
        self.owner._record(Recorded("POST", self.path, _lower(self.headers), body))
        reply: Reply = self.owner._next_reply()
        path, _, query = self.path.partition("?")
        if not path.startswith("/v1beta/models/"):
            self._send_json(404, {"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}})
            return
        if reply.status != 200:
            error = {"code": reply.status, "message": reply.error_message, "status": reply.error_status}
            self._send_json(reply.status, {"error": error})
            return

        def response(parts, finish, usage) -> dict:
            candidate = {"content": {"parts": list(parts), "role": "model"}, "index": 0}
            if finish:
                candidate["finishReason"] = finish
            return {
                "candidates": [candidate],
                "usageMetadata": usage,
                "modelVersion": "gemini-2.5-flash",
                "responseId": "fake-response-1",
            }

        if path.endswith(":generateContent"):
            self._send_json(200, response(reply.parts, reply.finish_reason, reply.usage.to_json()))
            return
        assert query == "alt=sse", query
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        prompt_only = {"promptTokenCount": reply.usage.prompt, "totalTokenCount": reply.usage.prompt}
        for i, part in enumerate(reply.parts):
            last = i == len(reply.parts) - 1
            chunk = response([part], reply.finish_reason if last else None, reply.usage.to_json() if last else prompt_only)
            self._send_chunk(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
        self._send_chunk(b"")
