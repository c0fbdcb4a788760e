"""The official ``anthropic`` SDK against Quota's ``/v1/messages`` (SPEC §3.2), with ``base_url``
set to Quota's root: against the fake Anthropic upstream (fake_anthropic.py) with a `developer`
key, and against the sandbox with a `test` key. Also the ``openai`` SDK against
``anthropic/…`` models (SPEC §3.1 translation). Every charge is checked to the credit."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from fake_anthropic import Reply, Usage
from harness import (
    ANTHROPIC_UPSTREAM_KEY,
    Gateway,
    assert_charged,
    cost,
    quota_of,
    refused_without_charge,
    post_sse,
)

SONNET = "anthropic/claude-sonnet-4.5"
HAIKU = "anthropic/claude-haiku-4.5"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def claude(gw: Gateway) -> anthropic.Anthropic:
    client = anthropic.Anthropic(api_key=gw.key, base_url=gw.server.url, max_retries=0, timeout=20)
    gw.server.clients.append(client)
    return client


def assert_clean_anthropic_request(rec, version: str = "2023-06-01") -> dict:
    """Quota's key, the client's `anthropic-version` (Quota's default for translated requests)."""
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == ANTHROPIC_UPSTREAM_KEY
    assert rec.headers["anthropic-version"] == version
    for name, value in rec.headers.items():
        assert "sk-quota-" not in value, f"the caller's Quota key was forwarded in {name}"
    return rec.json


def test_messages_create_is_forwarded_and_charged_with_cache_reads_and_writes(providers: Gateway, fake_anthropic):
    usage = Usage(input_tokens=100, cache_read_input_tokens=1000, cache_creation_input_tokens=200, output_tokens=50)
    fake_anthropic.push(Reply(content=({"type": "text", "text": "Bonjour!"},), usage=usage))
    before = providers.balance()
    client = claude(providers)
    msg = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=256,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Hello"}],
        stop_sequences=["END"],
        extra_body={"service_tier": "priority"},
    )
    assert msg.content[0].text == "Bonjour!"
    assert msg.usage.cache_read_input_tokens == 1000
    assert msg.usage.cache_creation_input_tokens == 200
    (rec,) = fake_anthropic.wait_for_requests(1)
    body = assert_clean_anthropic_request(rec, version=client.default_headers["anthropic-version"])
    assert body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": "Answer in French.",
        "messages": [{"role": "user", "content": "Hello"}],
        "stop_sequences": ["END"],
    }, "only the forwarded fields: no service_tier"
    # 100 × 3 + 1000 × 0.3 + 200 × 3.75 + 50 × 15 = 300 + 300 + 750 + 750
    expected = cost(SONNET, 1300, 50, cached_tokens=1000, cache_write_tokens=200)
    assert expected == 2100
    assert_charged(providers, before, quota_of(msg), expected)


def test_messages_stream_yields_the_text_and_ends_with_a_quota_usage_event(providers: Gateway, fake_anthropic):
    usage = Usage(input_tokens=40, output_tokens=12)
    reply = Reply(content=({"type": "text", "text": "Streaming through Quota."},), usage=usage)
    fake_anthropic.push(reply, reply)
    before = providers.balance()
    with claude(providers).messages.stream(
        model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Streaming through Quota."
    assert final.usage.output_tokens == 12
    expected = cost(HAIKU, 40, 12)
    assert providers.balance() == before - expected
    # The raw wire: Anthropic's events unchanged, then `quota_usage` with the charge.
    events = post_sse(
        providers,
        "/v1/messages",
        {"x-api-key": providers.key, "anthropic-version": "2023-06-01"},
        {"model": "claude-haiku-4-5", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
    )
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-3:] == ["message_delta", "message_stop", "quota_usage"]
    quota = json.loads(events[-1][1])
    assert_charged(providers, before - expected, quota, expected)
    # The final message_delta carries the same `quota` (SPEC §14, for strict stream parsers).
    delta = json.loads(events[-3][1])
    assert delta["usage"]["output_tokens"] == 12 and delta["quota"]["credits_used"] == quota["credits_used"]


def test_tool_use_round_trip_through_the_sdk(providers: Gateway, fake_anthropic):
    fake_anthropic.push(
        Reply(
            content=({"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},),
            stop_reason="tool_use",
            usage=Usage(input_tokens=300, output_tokens=20),
        ),
        Reply(content=({"type": "text", "text": "It is 18C in Paris."},), usage=Usage(input_tokens=350, output_tokens=9)),
    )
    client = claude(providers)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.create(model="claude-sonnet-4-5", max_tokens=128, tools=[WEATHER], messages=messages)
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C"}]},
    ]
    second = client.messages.create(model="claude-sonnet-4-5", max_tokens=128, tools=[WEATHER], messages=messages)
    assert second.content[0].text == "It is 18C in Paris."
    sent = fake_anthropic.wait_for_requests(2)[1].json
    assert sent["tools"] == [WEATHER]
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}],
    }
    assert sent["messages"][2]["content"][0]["tool_use_id"] == "toolu_01"


@pytest.mark.parametrize(
    "status,error_type,sdk_error,quota_status,code",
    [
        (429, "rate_limit_error", anthropic.RateLimitError, 429, "rate_limit"),
        (529, "overloaded_error", anthropic.InternalServerError, 502, "upstream_error"),
    ],
)
def test_anthropic_errors_reach_the_sdk_typed_and_are_not_charged(
    providers: Gateway, fake_anthropic, status, error_type, sdk_error, quota_status, code
):
    fake_anthropic.push(Reply(status=status, error_type=error_type, error_message=f"{error_type} from upstream"))
    with refused_without_charge(providers, sdk_error) as info:
        claude(providers).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    e = info.value
    assert e.status_code == quota_status
    assert e.body["error"]["code"] == code
    assert f"{error_type} from upstream" in e.body["error"]["message"]
    assert len(fake_anthropic.requests) == 1


def test_bad_input_is_a_400_in_quotas_shape_and_not_charged(providers: Gateway, fake_anthropic):
    with refused_without_charge(providers, anthropic.BadRequestError) as info:
        claude(providers).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "system", "content": "x"}]
        )
    assert info.value.body["error"]["code"] == "bad_request"
    with refused_without_charge(providers, anthropic.NotFoundError) as info:
        claude(providers).messages.create(model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["code"] == "model_not_found"
    assert fake_anthropic.requests == []


def test_openai_sdk_against_an_anthropic_model_is_translated_both_ways(providers: Gateway, fake_anthropic):
    usage = Usage(input_tokens=20, cache_read_input_tokens=500, output_tokens=7)
    reply = Reply(content=({"type": "text", "text": "Hi from Claude."},), usage=usage)
    fake_anthropic.push(reply, reply)
    before = providers.balance()
    resp = providers.client.chat.completions.create(
        model=HAIKU,
        messages=[{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hello"}],
        max_tokens=50,
        stop=["END"],
    )
    assert resp.choices[0].message.content == "Hi from Claude."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 520 and resp.usage.prompt_tokens_details.cached_tokens == 500
    body = assert_clean_anthropic_request(fake_anthropic.wait_for_requests(1)[0])
    assert body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 50,
        "system": "Be nice.",
        "messages": [{"role": "user", "content": "Hello"}],
        "stop_sequences": ["END"],
    }
    expected = cost(HAIKU, 520, 7, cached_tokens=500)
    assert_charged(providers, before, quota_of(resp), expected)
    chunks = list(
        providers.client.chat.completions.create(model=HAIKU, messages=[{"role": "user", "content": "Hello"}], stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi from Claude."
    assert quota_of(chunks[-1])["credits_used"] == expected
    assert fake_anthropic.requests[1].json["max_tokens"] == 64_000, "the model's max output when none is asked"


# --- the sandbox ---------------------------------------------------------------------------------


def test_sandbox_messages_create_and_stream_agree_and_are_charged(sandbox: Gateway):
    client = claude(sandbox)
    before = sandbox.balance()
    params = dict(model="claude-haiku-4-5", max_tokens=12, messages=[{"role": "user", "content": "Tell me a story."}])
    msg = client.messages.create(**params)
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 12
    expected = cost(HAIKU, msg.usage.input_tokens, 12)
    assert_charged(sandbox, before, quota_of(msg), expected)
    with client.messages.stream(**params) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == msg.content[0].text
    assert final.usage.output_tokens == 12
    assert sandbox.balance() == before - 2 * expected


def test_sandbox_tool_use_is_valid_for_the_sdk(sandbox: Gateway):
    client = claude(sandbox)
    first = client.messages.create(
        model="anthropic/claude-sonnet-4.5", max_tokens=200, tools=[WEATHER], messages=[{"role": "user", "content": "Paris?"}]
    )
    assert first.stop_reason == "tool_use"
    call = first.content[0]
    assert call.type == "tool_use" and call.name == "get_weather" and isinstance(call.input["city"], str)
    with client.messages.stream(
        model="anthropic/claude-sonnet-4.5", max_tokens=200, tools=[WEATHER], messages=[{"role": "user", "content": "Paris?"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == call.input
    second = client.messages.create(
        model="anthropic/claude-sonnet-4.5",
        max_tokens=200,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Paris?"},
            {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C"}]},
        ],
    )
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"


@pytest.mark.parametrize(
    "fault,sdk_error,status",
    [
        ("rate_limit", anthropic.RateLimitError, 429),
        ("upstream_error", anthropic.InternalServerError, 502),
        ("timeout", anthropic.InternalServerError, 504),
    ],
)
def test_sandbox_faults_on_the_messages_route(sandbox: Gateway, fault, sdk_error, status):
    with refused_without_charge(sandbox, sdk_error) as info:
        claude(sandbox).messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Quota-Sandbox-Fault": fault},
        )
    assert info.value.status_code == status


def test_sandbox_disconnect_mid_stream_raises_in_the_sdk_and_charges_what_was_sent(sandbox: Gateway):
    before = sandbox.balance()
    with pytest.raises(anthropic.APIStatusError):
        with claude(sandbox).messages.stream(
            model="claude-haiku-4-5",
            max_tokens=20,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Quota-Sandbox-Fault": "disconnect_mid_stream"},
        ) as stream:
            for _ in stream.text_stream:
                pass
    charged = before - sandbox.balance()
    assert 0 < charged < cost(HAIKU, 100, 20)


def test_openai_sdk_with_an_anthropic_model_in_the_sandbox_is_charged_at_claudes_price(sandbox: Gateway):
    before = sandbox.balance()
    resp = sandbox.client.chat.completions.create(
        model=HAIKU, messages=[{"role": "user", "content": "Hello"}], max_tokens=5
    )
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 5
    assert_charged(sandbox, before, quota_of(resp), cost(HAIKU, resp.usage.prompt_tokens, 5))
    chunks = list(
        sandbox.client.chat.completions.create(
            model=HAIKU, messages=[{"role": "user", "content": "Hello"}], max_tokens=5, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == resp.choices[0].message.content
    # What Anthropic cannot do is refused in the sandbox as in production.
    with refused_without_charge(sandbox, openai.BadRequestError):
        sandbox.client.chat.completions.create(model=HAIKU, messages=[{"role": "user", "content": "x"}], n=2)
