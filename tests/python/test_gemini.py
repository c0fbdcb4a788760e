"""The official ``google-genai`` SDK against Quota's Gemini routes (SPEC §3.3), with its base URL
pointed at Quota through ``http_options``: against the fake Gemini upstream (fake_gemini.py)
with a `developer` key, and against the sandbox with a `test` key. Also the ``openai`` SDK
against ``google/…`` models (SPEC §3.1 translation). Every charge is checked to the credit."""

from __future__ import annotations

import json

import httpx
import pytest
from google import genai
from google.genai import errors, types

from fake_gemini import Reply, Usage
from harness import (
    GEMINI_UPSTREAM_KEY,
    Gateway,
    assert_charged,
    cost,
    quota_of,
    refused_without_charge,
    post_sse,
)

FLASH = "google/gemini-2.5-flash"
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Current weather for a city",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def gemini(gw: Gateway, api_version: str | None = "v1beta") -> genai.Client:
    options = types.HttpOptions(base_url=gw.server.url, api_version=api_version, timeout=20_000)
    client = genai.Client(api_key=gw.key, http_options=options)
    gw.server.clients.append(client)  # kept alive (a collected Client closes its connections) and closed at teardown
    return client


def last_charge(gw: Gateway) -> dict:
    return gw.server.transfers()[-1]


def test_generate_content_is_forwarded_and_charged_with_cached_and_thinking_tokens(providers: Gateway, fake_gemini):
    usage = Usage(prompt=1000, cached=400, candidates=30, thoughts=70)
    fake_gemini.push(Reply(parts=({"text": "Hello "}, {"text": "world."}), usage=usage))
    before = providers.balance()
    resp = gemini(providers).models.generate_content(
        model="gemini-2.5-flash",
        contents="Say hello.",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=200, temperature=0.3),
    )
    assert resp.text == "Hello world."
    assert resp.usage_metadata.thoughts_token_count == 70
    assert resp.usage_metadata.cached_content_token_count == 400
    (rec,) = fake_gemini.wait_for_requests(1)
    assert rec.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert rec.headers["x-goog-api-key"] == GEMINI_UPSTREAM_KEY
    assert all("sk-quota-" not in v for v in rec.headers.values())
    body = rec.json
    assert body["contents"] == [{"parts": [{"text": "Say hello."}], "role": "user"}]
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}], "role": "user"}
    assert body["generationConfig"] == {"maxOutputTokens": 200, "temperature": 0.3}
    # (1000 − 400) × 0.30 + 400 × 0.075 + (30 + 70) × 2.50 = 180 + 30 + 250
    expected = cost(FLASH, 1000, 100, cached_tokens=400)
    assert expected == 460
    charge = last_charge(providers)
    assert (charge["from_account"], charge["amount"], charge["kind"]) == (providers.account.wallet, expected, "usage_charge")
    assert providers.balance() == before - expected


def test_the_raw_body_carries_quota_and_the_key_may_be_a_query_parameter(providers: Gateway, fake_gemini):
    fake_gemini.push(Reply(usage=Usage(prompt=10, candidates=5)))
    before = providers.balance()
    with httpx.Client(base_url=providers.server.url, timeout=20) as h:
        r = h.post(
            f"/v1beta/models/gemini-2.5-flash:generateContent?key={providers.key}",
            json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
        )
    assert r.status_code == 200, r.text
    assert fake_gemini.requests[0].path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert_charged(providers, before, r.json()["quota"], cost(FLASH, 10, 5))


def test_generate_content_stream_yields_every_chunk_and_quota_rides_on_the_last(providers: Gateway, fake_gemini):
    usage = Usage(prompt=50, candidates=3, thoughts=12)
    reply = Reply(parts=({"text": "One "}, {"text": "two "}, {"text": "three."}), usage=usage)
    fake_gemini.push(reply, reply)
    before = providers.balance()
    chunks = list(gemini(providers).models.generate_content_stream(model="gemini-2.5-flash", contents="Count."))
    assert [c.text for c in chunks] == ["One ", "two ", "three."]
    assert chunks[-1].usage_metadata.thoughts_token_count == 12
    assert fake_gemini.requests[0].path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    expected = cost(FLASH, 50, 15)
    assert providers.balance() == before - expected
    events = post_sse(
        providers,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"x-goog-api-key": providers.key},
        {"contents": [{"role": "user", "parts": [{"text": "Count."}]}]},
    )
    data = [json.loads(d) for _, d in events]
    assert len(data) == 3
    assert [("quota" in d) for d in data] == [False, False, True]
    assert_charged(providers, before - expected, data[-1]["quota"], expected)


def test_the_sdks_default_api_version_works_too(providers: Gateway, fake_gemini):
    resp = gemini(providers, api_version=None).models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert resp.text == "Hello from the fake Gemini."
    assert fake_gemini.requests[0].path == "/v1beta/models/gemini-2.5-flash:generateContent"


def test_function_calling_through_the_sdk(providers: Gateway, fake_gemini):
    fake_gemini.push(Reply(parts=({"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},)))
    resp = gemini(providers).models.generate_content(
        model="gemini-2.5-flash",
        contents="Weather in Paris?",
        config=types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])]),
    )
    (call,) = resp.function_calls
    assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
    sent = fake_gemini.requests[0].json
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"


@pytest.mark.parametrize("status,quota_status,code", [(429, 429, "rate_limit"), (500, 502, "upstream_error")])
def test_google_errors_reach_the_sdk_and_are_not_charged(providers: Gateway, fake_gemini, status, quota_status, code):
    fake_gemini.push(Reply(status=status, error_status="RESOURCE_EXHAUSTED", error_message="Quota exceeded upstream"))
    with refused_without_charge(providers, errors.APIError) as info:
        gemini(providers).models.generate_content(model="gemini-2.5-flash", contents="Hi")
    e = info.value
    assert e.code == quota_status
    assert e.details["error"]["code"] == code
    assert "Quota exceeded upstream" in e.message


def test_bad_input_is_a_400_in_quotas_shape_and_not_charged(providers: Gateway, fake_gemini):
    with refused_without_charge(providers, errors.ClientError) as info:
        gemini(providers).models.generate_content(
            model="gemini-2.5-flash",
            contents="Hi",
            config=types.GenerateContentConfig(tools=[types.Tool(google_search=types.GoogleSearch())]),
        )
    assert info.value.code == 400 and info.value.details["error"]["code"] == "bad_request"
    with refused_without_charge(providers, errors.ClientError) as info:
        gemini(providers).models.generate_content(model="gemini-9-ultra", contents="Hi")
    assert info.value.code == 404 and info.value.details["error"]["code"] == "model_not_found"
    assert fake_gemini.requests == []


def test_openai_sdk_against_a_google_model_is_translated_both_ways(providers: Gateway, fake_gemini):
    usage = Usage(prompt=30, cached=10, candidates=4, thoughts=6)
    reply = Reply(parts=({"text": "Hi from Gemini."},), usage=usage)
    fake_gemini.push(reply, reply)
    before = providers.balance()
    resp = providers.client.chat.completions.create(
        model=FLASH, messages=[{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hello"}], max_tokens=40
    )
    assert resp.choices[0].message.content == "Hi from Gemini."
    assert resp.usage.completion_tokens == 10
    assert resp.usage.completion_tokens_details.reasoning_tokens == 6
    sent = fake_gemini.wait_for_requests(1)[0]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.json == {
        "systemInstruction": {"parts": [{"text": "Be nice."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
        "generationConfig": {"maxOutputTokens": 40},
    }
    expected = cost(FLASH, 30, 10, cached_tokens=10)
    assert_charged(providers, before, quota_of(resp), expected)
    chunks = list(providers.client.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "Hello"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi from Gemini."
    assert quota_of(chunks[-1])["credits_used"] == expected


# --- the sandbox ---------------------------------------------------------------------------------


def test_sandbox_generate_content_and_stream_agree_and_are_charged(sandbox: Gateway):
    client = gemini(sandbox)
    before = sandbox.balance()
    config = types.GenerateContentConfig(max_output_tokens=9)
    resp = client.models.generate_content(model="gemini-2.5-flash", contents="Tell me a story.", config=config)
    assert resp.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert resp.usage_metadata.candidates_token_count == 9
    expected = cost(FLASH, resp.usage_metadata.prompt_token_count, 9)
    charge = last_charge(sandbox)
    assert (charge["to_account"], charge["amount"]) == ("platform:sandbox_revenue", expected)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="Tell me a story.", config=config))
    assert "".join(c.text for c in chunks) == resp.text
    assert sandbox.balance() == before - 2 * expected


def test_sandbox_function_call_and_faults(sandbox: Gateway):
    client = gemini(sandbox)
    resp = client.models.generate_content(
        model="google/gemini-2.5-flash",
        contents="Weather in Paris?",
        config=types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])]),
    )
    (call,) = resp.function_calls
    assert call.name == "get_weather" and isinstance(call.args["city"], str)
    faulty = genai.Client(
        api_key=sandbox.key,
        http_options=types.HttpOptions(
            base_url=sandbox.server.url, api_version="v1beta", headers={"X-Quota-Sandbox-Fault": "rate_limit"}
        ),
    )
    sandbox.server.clients.append(faulty)
    with refused_without_charge(sandbox, errors.ClientError) as info:
        faulty.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert info.value.code == 429


def test_openai_sdk_with_a_google_model_in_the_sandbox_is_charged_at_geminis_price(sandbox: Gateway):
    before = sandbox.balance()
    resp = sandbox.client.chat.completions.create(
        model=FLASH, messages=[{"role": "user", "content": "Hello"}], max_tokens=6, n=2
    )
    assert [c.finish_reason for c in resp.choices] == ["length", "length"]
    assert resp.usage.completion_tokens == 12
    assert_charged(sandbox, before, quota_of(resp), cost(FLASH, resp.usage.prompt_tokens, 12))
