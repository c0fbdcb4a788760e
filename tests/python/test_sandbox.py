"""Sandbox (`test` keys, SPEC §4.4) through the official OpenAI SDK: synthetic but SDK-valid
completions and streams, real metering and ledger charges, and fault injection."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from harness import (
    Gateway,
    assert_charged,
    assert_not_charged,
    cost,
    quota_of,
    read_sse,
)

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Tell me about double-entry ledgers."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
        },
    },
}


def test_completion_is_sdk_valid_and_charged_exactly_its_usage(sandbox: Gateway):
    before = sandbox.balance()
    raw = sandbox.client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.status_code == 200
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.model == MODEL
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason == "stop"
    u = resp.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens

    q = quota_of(resp)
    assert q["billing_mode"] == "test"
    assert q["sandbox"] is True
    assert q["request_id"] == raw.headers["x-request-id"]
    expected = cost(MODEL, u.prompt_tokens, u.completion_tokens)
    assert expected > 0
    assert_charged(sandbox, before, q, expected, to_account="platform:sandbox_revenue", kind="sandbox_charge")


def test_same_request_same_text_and_every_request_is_charged(sandbox: Gateway):
    before = sandbox.balance()
    a = sandbox.client.chat.completions.create(model=MODEL, messages=MESSAGES)
    b = sandbox.client.chat.completions.create(model=MODEL, messages=MESSAGES)
    other = sandbox.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Something else entirely, please."}]
    )
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.model_dump() == b.usage.model_dump()
    assert other.choices[0].message.content != a.choices[0].message.content

    charges = [cost(MODEL, r.usage.prompt_tokens, r.usage.completion_tokens) for r in (a, b, other)]
    running = before
    for r, c in zip((a, b, other), charges):
        q = quota_of(r)
        assert q["credits_used"] == c
        assert q["balance_before"] == running
        assert q["balance_after"] == running - c
        running -= c
    assert len({quota_of(r)["request_id"] for r in (a, b, other)}) == 3
    assert sandbox.balance() == before - sum(charges)


def test_stream_and_non_stream_say_the_same_thing(sandbox: Gateway):
    full = sandbox.client.chat.completions.create(model=MODEL, messages=MESSAGES)
    chunks = list(
        sandbox.client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_max_tokens_is_respected(sandbox: Gateway):
    before = sandbox.balance()
    resp = sandbox.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 5
    assert resp.choices[0].message.content.strip()
    q = quota_of(resp)
    assert_charged(sandbox, before, q, cost(MODEL, resp.usage.prompt_tokens, 5))


def test_max_completion_tokens_is_respected_when_streaming(sandbox: Gateway):
    before = sandbox.balance()
    stream = sandbox.client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_completion_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 3
    q = quota_of(last)
    assert_charged(sandbox, before, q, cost(MODEL, last.usage.prompt_tokens, 3))


def test_tools_get_a_tool_call_the_sdk_parses(sandbox: Gateway):
    before = sandbox.balance()
    resp = sandbox.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str)
    assert args["unit"] in ("celsius", "fahrenheit")
    assert_charged(
        sandbox, before, quota_of(resp), cost(MODEL, resp.usage.prompt_tokens, resp.usage.completion_tokens)
    )

    # The SDK can send the result back; the conversation then gets a text answer, no tool call.
    follow = sandbox.client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What's the weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
        ],
        tools=[WEATHER_TOOL],
    )
    assert follow.choices[0].finish_reason == "stop"
    assert follow.choices[0].message.tool_calls is None
    assert follow.choices[0].message.content


def test_streamed_tool_call_reassembles(sandbox: Gateway):
    before = sandbox.balance()
    chunks = list(
        sandbox.client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What's the weather in Paris?"}],
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    name, args, ids = "", "", set()
    for c in chunks:
        for ch in c.choices:
            for tc in ch.delta.tool_calls or []:
                assert tc.index == 0
                if tc.id:
                    ids.add(tc.id)
                if tc.function and tc.function.name:
                    name += tc.function.name
                if tc.function and tc.function.arguments:
                    args += tc.function.arguments
    assert len(ids) == 1
    assert name == "get_weather"
    parsed = json.loads(args)
    assert set(parsed) == {"city", "unit"}
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == ["tool_calls"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert_charged(
        sandbox, before, quota_of(last), cost(MODEL, last.usage.prompt_tokens, last.usage.completion_tokens)
    )


def test_stream_ends_with_usage_and_quota_chunk(sandbox: Gateway):
    before = sandbox.balance()
    chunks = list(
        sandbox.client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len(chunks) >= 3
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    *body, last = chunks
    assert all(len(c.choices) == 1 for c in body)
    assert [c.choices[0].finish_reason for c in body][-1] == "stop"
    assert last.choices == []
    u = last.usage
    assert u is not None and u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    q = quota_of(last)
    assert q["sandbox"] is True and q["billing_mode"] == "test"
    assert_charged(sandbox, before, q, cost(MODEL, u.prompt_tokens, u.completion_tokens))


def test_raw_sse_carries_quota_before_done_even_without_include_usage(sandbox: Gateway):
    """The wire itself (httpx, no SDK): `data:` events, one final chunk with `choices: []`,
    `usage` and `quota`, then `data: [DONE]` — also when the client did not ask for usage."""
    before = sandbox.balance()
    with httpx.Client(base_url=sandbox.server.url, timeout=20) as h:
        with h.stream(
            "POST",
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {sandbox.key}"},
            json={"model": MODEL, "messages": MESSAGES, "stream": True},
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            request_id = r.headers["x-request-id"]
            events = read_sse(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    finals = [c for c in chunks if c["choices"] == []]
    assert len(finals) == 1 and finals[0] is chunks[-1]
    final = chunks[-1]
    assert final["object"] == "chat.completion.chunk"
    q = final["quota"]
    assert q["request_id"] == request_id
    assert set(q) >= {"credits_used", "balance_before", "balance_after", "billing_mode", "request_id"}
    u = final["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert all("quota" not in c for c in chunks[:-1])
    assert_charged(sandbox, before, q, cost(MODEL, u["prompt_tokens"], u["completion_tokens"]))


FAULTS = [
    ("rate_limit", openai.RateLimitError, 429, "rate_limit"),
    ("upstream_error", openai.InternalServerError, 502, "upstream_error"),
    ("timeout", openai.InternalServerError, 504, "gateway_timeout"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault,exc_type,status,code", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_injection_maps_to_typed_errors_and_charges_nothing(
    sandbox: Gateway, fault, exc_type, status, code, stream
):
    before = sandbox.balance()
    transfers_before = len(sandbox.server.transfers())
    with pytest.raises(exc_type) as info:
        result = sandbox.client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=stream,
            extra_headers={"X-Quota-Sandbox-Fault": fault},
        )
        if stream:
            list(result)
    e = info.value
    assert e.status_code == status
    assert e.code == code
    assert e.body["type"]
    assert e.body["message"]
    assert_not_charged(sandbox, before, transfers_before, e.response.headers["x-request-id"])


def test_disconnect_mid_stream_raises_in_the_sdk_and_charges_what_was_produced(sandbox: Gateway):
    # The same request without the fault tells how much the whole answer costs.
    full = sandbox.client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=False)
    full_tokens = full.usage.completion_tokens
    prompt_tokens = full.usage.prompt_tokens

    before = sandbox.balance()
    raw = sandbox.client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        extra_headers={"X-Quota-Sandbox-Fault": "disconnect_mid_stream"},
    )
    assert raw.status_code == 200
    request_id = raw.headers["x-request-id"]
    pieces = []
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            for ch in chunk.choices:
                if ch.delta.content:
                    pieces.append(ch.delta.content)
    assert info.value.code == "upstream_error"
    produced = len(pieces)  # the sandbox streams one token per content chunk
    assert 0 < produced < full_tokens
    assert full.choices[0].message.content.startswith("".join(pieces))

    expected = cost(MODEL, prompt_tokens, produced)
    after = sandbox.balance()
    assert before - after == expected
    transfers = sandbox.server.transfers(cause=request_id)
    assert [(t["from_account"], t["to_account"], t["amount"]) for t in transfers] == [
        (sandbox.account.wallet, "platform:sandbox_revenue", expected)
    ]


def test_disconnect_fault_without_stream_is_an_uncharged_upstream_error(sandbox: Gateway):
    before = sandbox.balance()
    transfers_before = len(sandbox.server.transfers())
    with pytest.raises(openai.InternalServerError) as info:
        sandbox.client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            extra_headers={"X-Quota-Sandbox-Fault": "disconnect_mid_stream"},
        )
    assert info.value.status_code == 502
    assert info.value.code == "upstream_error"
    assert_not_charged(sandbox, before, transfers_before, info.value.response.headers["x-request-id"])


def test_unknown_fault_is_a_bad_request(sandbox: Gateway):
    before = sandbox.balance()
    transfers_before = len(sandbox.server.transfers())
    with pytest.raises(openai.BadRequestError) as info:
        sandbox.client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_headers={"X-Quota-Sandbox-Fault": "explode"}
        )
    assert info.value.status_code == 400
    assert info.value.code == "bad_request"
    assert_not_charged(sandbox, before, transfers_before, info.value.response.headers["x-request-id"])
