"""Developer keys proxied to an OpenAI-compatible upstream (SPEC §3.1, §3.6, §4.3): the fake
upstream in fake_openai.py stands in for OpenAI; every assertion about what Quota sent upstream
uses the fake's record of the request."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from fake_openai import Reply, Usage
from harness import (
    UPSTREAM_KEY,
    Gateway,
    assert_charged,
    assert_not_charged,
    cost,
    quota_of,
    read_sse,
)

MODEL = "gpt-4o-mini"
# Long enough that the hold (an upper bound: one token per byte, SPEC §4.3(1)) covers the
# prompt sizes the fake upstream reports; settlement is capped at the hold.
MESSAGES = [
    {"role": "system", "content": "You are terse. " + "Answer in one short line. " * 100},
    {"role": "user", "content": "Say hello."},
]


def assert_clean_upstream_request(rec, *, stream: bool) -> dict:
    """What every forwarded request must look like; returns its JSON body."""
    assert rec.method == "POST"
    assert rec.path == "/v1/chat/completions"
    assert rec.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    for name, value in rec.headers.items():
        assert "sk-quota-" not in value, f"the caller's Quota key was forwarded in {name}"
        assert not name.startswith("x-quota"), f"Quota's own header {name} was forwarded"
    body = rec.json
    assert body["model"] == "gpt-4o-mini"  # the catalog's upstream id
    if stream:
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
    else:
        assert not body.get("stream")
    return body


def test_completion_is_forwarded_and_charged_from_upstream_usage(proxy: Gateway, fake_upstream):
    usage = Usage(prompt_tokens=1234, completion_tokens=345, cached_tokens=1000, reasoning_tokens=45)
    fake_upstream.push(Reply(pieces=("Hello", " there", "!"), usage=usage, model="gpt-4o-mini-2024-07-18"))
    before = proxy.balance()
    raw = proxy.client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        temperature=0.25,
        max_tokens=64,
        seed=7,
        user="end-user-42",
        extra_body={"service_tier": "priority", "store": True, "quota_made_up_field": {"x": 1}},
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "Hello there!"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "gpt-4o-mini-2024-07-18"
    assert resp.usage.prompt_tokens == 1234
    assert resp.usage.completion_tokens == 345
    assert resp.usage.prompt_tokens_details.cached_tokens == 1000
    assert resp.usage.completion_tokens_details.reasoning_tokens == 45

    (rec,) = fake_upstream.wait_for_requests(1)
    body = assert_clean_upstream_request(rec, stream=False)
    assert body["messages"] == MESSAGES
    assert body["temperature"] == 0.25
    assert body["max_tokens"] == 64
    assert body["seed"] == 7
    assert body["user"] == "end-user-42"
    assert body["store"] is True, "store is forwarded (SPEC 3.1; OpenAI keeps the completion)"
    for unforwarded in ("service_tier", "quota_made_up_field"):
        assert unforwarded not in body, f"{unforwarded} reached the upstream"

    q = quota_of(resp)
    assert q["billing_mode"] == "developer"
    assert "sandbox" not in q or q["sandbox"] is False
    assert q["request_id"] == raw.headers["x-request-id"]
    # (1234 - 1000) × 150000 + 1000 × 75000 + 345 × 600000 = 317,100,000 → ceil(317.1) = 318
    expected = cost(MODEL, 1234, 345, cached_tokens=1000)
    assert expected == 318
    assert_charged(proxy, before, q, expected, to_account="platform:revenue", kind="usage_charge")


@pytest.mark.parametrize(
    "stream_options",
    [None, {"include_usage": False}, {"include_usage": True}],
    ids=["no-stream-options", "include-usage-false", "include-usage-true"],
)
def test_stream_asks_upstream_for_usage_and_ends_with_quota(proxy: Gateway, fake_upstream, stream_options):
    usage = Usage(prompt_tokens=2000, completion_tokens=7, cached_tokens=1500, reasoning_tokens=0)
    pieces = ("Streaming", " works", " through", " Quota", ".")
    fake_upstream.push(Reply(pieces=pieces, usage=usage))
    before = proxy.balance()
    kwargs = {} if stream_options is None else {"stream_options": stream_options}
    chunks = list(proxy.client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **kwargs))

    (rec,) = fake_upstream.wait_for_requests(1)
    assert_clean_upstream_request(rec, stream=True)

    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == list(pieces)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    finals = [c for c in chunks if not c.choices]
    assert len(finals) == 1 and finals[0] is chunks[-1], "the upstream's usage chunk must not be forwarded as well"
    last = chunks[-1]
    assert last.usage.prompt_tokens == 2000
    assert last.usage.completion_tokens == 7
    assert last.usage.prompt_tokens_details.cached_tokens == 1500
    # 500 × 150000 + 1500 × 75000 + 7 × 600000 = 191,700,000 → 192
    expected = cost(MODEL, 2000, 7, cached_tokens=1500)
    assert expected == 192
    assert_charged(proxy, before, quota_of(last), expected)


def test_raw_stream_is_openai_sse_with_one_final_chunk(proxy: Gateway, fake_upstream):
    fake_upstream.push(Reply(pieces=("a", "b", "c"), usage=Usage(10, 3, 0, 0)))
    before = proxy.balance()
    with httpx.Client(base_url=proxy.server.url, timeout=20) as h:
        with h.stream(
            "POST",
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {proxy.key}"},
            json={"model": MODEL, "messages": MESSAGES, "stream": True},
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = read_sse(r)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c for c in chunks if c["choices"] == []] == [chunks[-1]]
    final = chunks[-1]
    assert final["id"] == chunks[0]["id"]
    assert final["usage"]["prompt_tokens"] == 10 and final["usage"]["completion_tokens"] == 3
    assert_charged(proxy, before, final["quota"], cost(MODEL, 10, 3))


def test_upstream_429_is_a_rate_limit_error_and_not_charged(proxy: Gateway, fake_upstream):
    fake_upstream.push(
        Reply(
            status=429,
            error_message="Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3.",
            error_type="requests",
            error_code="rate_limit_exceeded",
        )
    )
    before = proxy.balance()
    transfers_before = len(proxy.server.transfers())
    with pytest.raises(openai.RateLimitError) as info:
        proxy.client.chat.completions.create(model=MODEL, messages=MESSAGES)
    e = info.value
    assert e.status_code == 429
    assert e.code == "rate_limit"
    assert len(fake_upstream.requests) == 1, "Quota must not retry on its own"
    assert_not_charged(proxy, before, transfers_before, e.response.headers["x-request-id"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_upstream_500_is_502_with_the_message_kept_and_keys_scrubbed(proxy: Gateway, fake_upstream, stream):
    other_key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    fake_upstream.push(
        Reply(
            status=500,
            error_message=(
                f"The engine is currently overloaded. Key {UPSTREAM_KEY} was used; "
                f"also tried {other_key}."
            ),
        )
    )
    before = proxy.balance()
    transfers_before = len(proxy.server.transfers())
    with pytest.raises(openai.InternalServerError) as info:
        result = proxy.client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
        if stream:
            list(result)
    e = info.value
    assert e.status_code == 502
    assert e.code == "upstream_error"
    assert "The engine is currently overloaded" in e.body["message"]
    raw = e.response.text
    assert UPSTREAM_KEY not in raw
    assert "UPSTREAMsecret" not in raw
    assert other_key not in raw
    assert "abcdefghijklmnop" not in raw
    assert_not_charged(proxy, before, transfers_before, e.response.headers["x-request-id"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_headers_later_than_first_byte_timeout_is_504_and_not_charged(start_proxy, fake_upstream, stream):
    gw = start_proxy(QUOTA_UPSTREAM_FIRST_BYTE_TIMEOUT_SECS="1")
    gate = threading.Event()
    fake_upstream.push(Reply(hold_headers=gate))
    before = gw.balance()
    transfers_before = len(gw.server.transfers())
    try:
        with pytest.raises(openai.InternalServerError) as info:
            result = gw.client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
            if stream:
                list(result)
        assert not gate.is_set()
        # The fake was still holding its headers back when Quota gave up.
        assert len(fake_upstream.requests) == 1
    finally:
        gate.set()
    e = info.value
    assert e.status_code == 504
    assert e.code == "gateway_timeout"
    assert_not_charged(gw, before, transfers_before, e.response.headers["x-request-id"])


def test_no_provider_key_is_503_and_nothing_is_called(start_proxy, fake_upstream):
    gw = start_proxy(OPENAI_API_KEY=None)
    before = gw.balance()
    transfers_before = len(gw.server.transfers())
    with pytest.raises(openai.InternalServerError) as info:
        gw.client.chat.completions.create(model=MODEL, messages=MESSAGES)
    e = info.value
    assert e.status_code == 503
    assert e.code == "provider_unavailable"
    assert fake_upstream.requests == []
    assert_not_charged(gw, before, transfers_before, e.response.headers["x-request-id"])


def test_upstream_closing_mid_stream_raises_in_the_sdk_and_charges_what_was_forwarded(
    proxy: Gateway, fake_upstream
):
    # Five one-token pieces; the connection drops after three, before any usage is reported.
    fake_upstream.push(Reply(pieces=("Hello", " from", " the", " fake", " upstream"), close_after_pieces=3))
    before = proxy.balance()
    raw = proxy.client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, stream=True)
    assert raw.status_code == 200
    request_id = raw.headers["x-request-id"]
    sent_body = raw.http_request.content
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            for ch in chunk.choices:
                if ch.delta.content:
                    received.append(ch.delta.content)
    assert info.value.code == "upstream_error"
    assert received == ["Hello", " from", " the"]

    charged = before - proxy.balance()
    # Usage never arrived: Quota counts the 3 output tokens it forwarded, plus at most the prompt
    # bound it reserved for (a byte count of the request body can never be below the tokens).
    assert cost(MODEL, 0, 3) <= charged <= cost(MODEL, len(sent_body), 3)
    transfers = proxy.server.transfers(cause=request_id)
    assert [(t["from_account"], t["to_account"], t["amount"]) for t in transfers] == [
        (proxy.account.wallet, "platform:revenue", charged)
    ]


def test_sandbox_fault_header_is_ignored_for_developer_keys(proxy: Gateway, fake_upstream):
    fake_upstream.push(Reply(usage=Usage(100, 10, 0, 0)))
    before = proxy.balance()
    resp = proxy.client.chat.completions.create(
        model=MODEL, messages=MESSAGES, extra_headers={"X-Quota-Sandbox-Fault": "rate_limit"}
    )
    (rec,) = fake_upstream.wait_for_requests(1)
    assert_clean_upstream_request(rec, stream=False)
    assert_charged(proxy, before, quota_of(resp), cost(MODEL, 100, 10))


def test_client_leaving_mid_stream_is_charged_for_what_was_forwarded(start_proxy, fake_upstream):
    """SPEC §4.3.5: the client reads two pieces and hangs up while the upstream is stalled and
    has reported no usage. The charge (made when Quota notices, at the latest when its 3 s total
    upstream timeout ends the call) covers the two forwarded output tokens plus at most the
    reserved prompt bound, and the stream's completion never arrives to change it."""
    gw = start_proxy(QUOTA_UPSTREAM_TIMEOUT_SECS="3")
    resume = threading.Event()
    fake_upstream.push(
        Reply(
            pieces=("One", " two", " three", " four"),
            usage=Usage(prompt_tokens=50, completion_tokens=4000, cached_tokens=0, reasoning_tokens=0),
            pause_after_pieces=2,
            resume=resume,
        )
    )
    before = gw.balance()
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": True}).encode()
    received = []
    with httpx.Client(base_url=gw.server.url, timeout=20) as h:
        with h.stream(
            "POST",
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {gw.key}", "Content-Type": "application/json"},
            content=body,
        ) as r:
            assert r.status_code == 200
            request_id = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    for ch in json.loads(line[6:]).get("choices", []):
                        if ch["delta"].get("content"):
                            received.append(ch["delta"]["content"])
                if len(received) == 2:
                    break
    assert received == ["One", " two"]
    # The client is gone. Wait (bounded) for the charge to land in the ledger.
    transfers = gw.server.wait_for_transfers(request_id, timeout=15)
    resume.set()
    charged = before - gw.balance()
    assert [(t["from_account"], t["to_account"], t["amount"]) for t in transfers] == [
        (gw.account.wallet, "platform:revenue", charged)
    ]
    assert cost(MODEL, 0, 2) <= charged <= cost(MODEL, len(body), 2)
    assert charged < cost(MODEL, 50, 4000)
