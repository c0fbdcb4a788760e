"""Embeddings and token counting (SPEC §3.8) through the official SDKs against the sandbox:
``openai`` ``embeddings.create`` (the SDK's default base64 transport and explicit floats),
``anthropic`` ``messages.count_tokens``, ``google-genai`` ``models.count_tokens`` and
``models.embed_content``. Counting is free; embeddings are charged per input token."""

from __future__ import annotations

import math

import anthropic
from google import genai
from google.genai import types

from harness import Gateway, quota_of


def test_openai_embeddings_decode_in_the_sdk_and_are_unit_vectors(sandbox: Gateway):
    before = sandbox.balance()
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    packed = sandbox.client.embeddings.create(model="text-embedding-3-small", input=["ledger", "wallet"])
    floats = sandbox.client.embeddings.create(model="text-embedding-3-small", input=["ledger", "wallet"], encoding_format="float")
    assert len(packed.data) == 2 and len(packed.data[0].embedding) == 1536
    assert math.isclose(math.sqrt(sum(x * x for x in packed.data[0].embedding)), 1.0, rel_tol=1e-4)
    for a, b in zip(packed.data[0].embedding, floats.data[0].embedding):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    short = sandbox.client.embeddings.create(model="text-embedding-3-large", input="x", dimensions=32)
    assert len(short.data[0].embedding) == 32
    spent = quota_of(packed)["credits_used"] + quota_of(floats)["credits_used"] + quota_of(short)["credits_used"]
    assert spent > 0 and sandbox.balance() == before - spent


def test_anthropic_count_tokens_is_free_and_matches_what_a_run_bills(sandbox: Gateway):
    client = anthropic.Anthropic(api_key=sandbox.key, base_url=sandbox.server.url, max_retries=0, timeout=20)
    messages = [{"role": "user", "content": "Count these words for me please."}]
    before = sandbox.balance()
    counted = client.messages.count_tokens(model="claude-haiku-4-5", messages=messages, system="Be exact.")
    assert counted.input_tokens > 0
    assert sandbox.balance() == before, "counting is free"
    ran = client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=messages, system="Be exact.")
    assert ran.usage.input_tokens == counted.input_tokens


def test_gemini_count_tokens_and_embed_content(sandbox: Gateway):
    options = types.HttpOptions(base_url=sandbox.server.url, api_version="v1beta", timeout=20_000)
    client = genai.Client(api_key=sandbox.key, http_options=options)
    sandbox.server.clients.append(client)
    before = sandbox.balance()
    counted = client.models.count_tokens(model="gemini-2.5-flash", contents="How many tokens is this?")
    assert counted.total_tokens > 0
    assert sandbox.balance() == before, "counting is free"
    result = client.models.embed_content(
        model="gemini-embedding-001",
        contents=["first text", "second text"],
        config=types.EmbedContentConfig(output_dimensionality=16),
    )
    assert len(result.embeddings) == 2
    assert all(len(e.values) == 16 for e in result.embeddings)
    assert result.embeddings[0].values != result.embeddings[1].values
    assert sandbox.balance() < before, "embeddings are charged"
