"""Real clients that default to the OpenAI Responses API (SPEC §3.7) and call embeddings (§3.8),
pinned in requirements.txt, against the sandbox and against the fake OpenAI: the OpenAI Agents
SDK's default agent, and LangChain's ``ChatOpenAI(use_responses_api=True)`` and
``OpenAIEmbeddings``. Each call is charged; nothing here reaches the internet (Agents tracing is
off, LangChain's tiktoken length check is off)."""

from __future__ import annotations

import asyncio

import openai
import pytest
from agents import Agent, ModelSettings, Runner, set_default_openai_client, set_tracing_disabled
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from fake_openai import Reply, Usage
from harness import Gateway

set_tracing_disabled(True)


def run_agent(gw: Gateway, prompt: str) -> str:
    async def go() -> str:
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=f"{gw.server.url}/v1", max_retries=0)
        try:
            # The SDK's defaults (the Responses API, through the default client), with a catalog
            # model: its own default model id (`gpt-5.6-luna` in 0.24) has no published price.
            # Without an output cap the hold is the model's whole 128k output ($1.79 on gpt-5.2),
            # more than a new account's $1: an agent meant to run on a small wallet sets one.
            set_default_openai_client(client, use_for_tracing=False)
            settings = ModelSettings(max_tokens=200)
            agent = Agent(name="Assistant", instructions="You are terse.", model="gpt-5.2", model_settings=settings)
            result = await Runner.run(agent, prompt)
            return result.final_output
        finally:
            await client.close()

    return asyncio.run(go())


def test_agents_sdk_default_agent_runs_on_the_sandbox_and_is_charged(sandbox: Gateway):
    before = sandbox.balance()
    out = run_agent(sandbox, "Say something about ledgers.")
    assert isinstance(out, str) and out.strip()
    assert sandbox.balance() < before


def test_agents_sdk_default_agent_runs_through_the_proxy(proxy: Gateway, fake_upstream):
    fake_upstream.push(Reply(pieces=("Balanced.",), usage=Usage(prompt_tokens=30, completion_tokens=3, cached_tokens=0, reasoning_tokens=0)))
    before = proxy.balance()
    assert run_agent(proxy, "Is the ledger balanced? " * 5) == "Balanced."
    assert fake_upstream.requests[-1].path == "/v1/responses"
    assert proxy.balance() < before


@pytest.mark.parametrize("streaming", [False, True])
def test_langchain_chat_openai_on_the_responses_api(sandbox: Gateway, streaming: bool):
    llm = ChatOpenAI(
        model="gpt-4o-mini", api_key=sandbox.key, base_url=f"{sandbox.server.url}/v1",
        use_responses_api=True, max_retries=0, streaming=streaming,
    )
    before = sandbox.balance()
    msg = llm.invoke("Tell me about double entry.")
    assert msg.text.strip()
    assert sandbox.balance() < before


def test_langchain_embeddings(sandbox: Gateway):
    emb = OpenAIEmbeddings(
        model="text-embedding-3-small", api_key=sandbox.key, base_url=f"{sandbox.server.url}/v1",
        check_embedding_ctx_length=False, max_retries=0,
    )
    before = sandbox.balance()
    vectors = emb.embed_documents(["a ledger", "a wallet"])
    assert len(vectors) == 2 and len(vectors[0]) == 1536
    assert emb.embed_query("a ledger") == pytest.approx(vectors[0], rel=1e-5)
    assert sandbox.balance() < before
