"""The OpenAI Responses API (SPEC §3.7) through the official SDK's ``client.responses.create`` and
``client.responses.stream``: the sandbox answers in the Responses shape, the proxy forwards to the
fake OpenAI, and both are charged exactly their usage with ``quota`` on the response."""

from __future__ import annotations

import openai
import pytest

from fake_openai import Reply, Usage
from harness import Gateway, assert_charged, cost, quota_of, refused_without_charge

MODEL = "gpt-4o-mini"
INPUT = [{"role": "user", "content": "Explain double-entry bookkeeping in one line."}]


def test_sandbox_response_is_sdk_valid_and_charged_its_usage(sandbox: Gateway):
    before = sandbox.balance()
    resp = sandbox.client.responses.create(model=MODEL, input=INPUT, instructions="Be brief.", max_output_tokens=40)
    assert resp.object == "response"
    assert resp.status == "completed"
    assert resp.output_text.strip()
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    q = quota_of(resp)
    assert q["sandbox"] is True
    expected = cost(MODEL, resp.usage.input_tokens, resp.usage.output_tokens)
    assert_charged(sandbox, before, q, expected)


def test_sandbox_stream_helper_yields_text_and_the_completed_response_carries_quota(sandbox: Gateway):
    plain = sandbox.client.responses.create(model=MODEL, input=INPUT, max_output_tokens=40)
    before = sandbox.balance()
    deltas, completed = [], None
    with sandbox.client.responses.stream(model=MODEL, input=INPUT, max_output_tokens=40) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                completed = event.response
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == plain.output_text
    assert completed is not None
    q = (completed.model_extra or {})["quota"]
    assert q["credits_used"] == quota_of(plain)["credits_used"], "streamed and not are charged the same"
    assert_charged(sandbox, before, q, q["credits_used"])


def test_proxied_response_is_forwarded_and_billed_with_cached_and_reasoning_tokens(proxy: Gateway, fake_upstream):
    usage = Usage(prompt_tokens=60, completion_tokens=25, cached_tokens=40, reasoning_tokens=10)
    fake_upstream.push(Reply(pieces=("Debits", " equal", " credits."), usage=usage))
    before = proxy.balance()
    long_input = [{"role": "user", "content": "ledger " * 40}]
    resp = proxy.client.responses.create(model=MODEL, input=long_input, max_output_tokens=64)
    sent = fake_upstream.requests[-1]
    assert sent.path == "/v1/responses"
    assert sent.json["model"] == MODEL and sent.json["max_output_tokens"] == 64
    assert resp.output_text == "Debits equal credits."
    expected = cost(MODEL, 60, 25, cached_tokens=40)
    assert_charged(proxy, before, quota_of(resp), expected)

    fake_upstream.push(Reply(pieces=("Debits", " equal", " credits."), usage=usage))
    before = proxy.balance()
    with proxy.client.responses.stream(model=MODEL, input=long_input, max_output_tokens=64) as stream:
        final = stream.get_final_response()
    assert final.output_text == "Debits equal credits."
    assert proxy.balance() == before - expected


def test_a_provider_side_tool_is_refused_by_name_and_not_charged(sandbox: Gateway):
    with refused_without_charge(sandbox, openai.BadRequestError) as info:
        sandbox.client.responses.create(model=MODEL, input="news today?", tools=[{"type": "web_search_preview"}])
    assert "web_search_preview" in info.value.response.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_function_tools_get_a_function_call(sandbox: Gateway, stream: bool):
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    if stream:
        with sandbox.client.responses.stream(model=MODEL, input="weather in Paris?", tools=tools) as s:
            resp = s.get_final_response()
    else:
        resp = sandbox.client.responses.create(model=MODEL, input="weather in Paris?", tools=tools)
    call = resp.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert "city" in call.arguments
