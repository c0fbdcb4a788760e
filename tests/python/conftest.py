"""pytest fixtures: a fresh ``quota serve`` per test (see harness.py), the fake OpenAI upstream,
and ready-made gateways (sandbox key; developer key proxying to the fake)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from fake_anthropic import FakeAnthropic
from fake_gemini import FakeGemini
from fake_openai import FakeOpenAI
from harness import ANTHROPIC_UPSTREAM_KEY, GEMINI_UPSTREAM_KEY, UPSTREAM_KEY, Gateway, QuotaServer, sdk_client


@pytest.fixture
def start_quota(tmp_path: Path) -> Iterator[Callable[..., QuotaServer]]:
    """Start gateways for this test: ``start_quota(QUOTA_X="…", OPENAI_API_KEY=None, …)``.

    At teardown each one is stopped, its ledger verified and its log checked for secrets."""
    servers: list[QuotaServer] = []

    def start(**env: str | None) -> QuotaServer:
        workdir = tmp_path / f"quota{len(servers)}"
        workdir.mkdir()
        s = QuotaServer(workdir, env)
        servers.append(s)
        s.start()
        return s

    yield start

    problems = []
    for s in servers:
        s.close()
        if not s.url:
            continue
        verify = s.cli("ledger", "verify")
        if verify.returncode != 0:
            problems.append(
                f"`quota ledger verify` exited {verify.returncode} for {s.workdir}:\n"
                f"{verify.stdout}\n{verify.stderr}"
            )
        log = s.log_text()
        upstream_keys = [s.env.get(k) or "" for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")]
        for secret in s.secrets + upstream_keys:
            if secret and secret in log:
                problems.append(f"a secret ({secret[:12]}…) appears in the log {s.log_path}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def fake_upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


@pytest.fixture
def sandbox(start_quota) -> Gateway:
    """A gateway with no provider configured, an account, and a sandbox (`test`) key."""
    server = start_quota()
    account = server.register()
    key = account.create_key("test")
    return Gateway(server, account, key, sdk_client(server, key))


@pytest.fixture
def start_proxy(start_quota, fake_upstream) -> Callable[..., Gateway]:
    """Start a gateway whose OpenAI upstream is the fake (extra env overrides allowed), with an
    account and a `developer` key."""

    def start(**env: str | None) -> Gateway:
        config: dict[str, str | None] = {
            "QUOTA_OPENAI_BASE_URL": fake_upstream.base_url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
        }
        config.update(env)
        server = start_quota(**config)
        account = server.register()
        key = account.create_key("developer")
        return Gateway(server, account, key, sdk_client(server, key))

    return start


@pytest.fixture
def proxy(start_proxy) -> Gateway:
    return start_proxy()


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    yield fake
    fake.close()


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    fake = FakeGemini()
    yield fake
    fake.close()


@pytest.fixture
def providers(start_quota, fake_anthropic, fake_gemini) -> Gateway:
    """A gateway whose Anthropic and Google upstreams are the fakes, with an account and a
    `developer` key (its `client` is the OpenAI SDK)."""
    server = start_quota(
        QUOTA_ANTHROPIC_BASE_URL=fake_anthropic.base_url,
        ANTHROPIC_API_KEY=ANTHROPIC_UPSTREAM_KEY,
        QUOTA_GOOGLE_BASE_URL=fake_gemini.base_url,
        GEMINI_API_KEY=GEMINI_UPSTREAM_KEY,
    )
    account = server.register()
    key = account.create_key("developer")
    return Gateway(server, account, key, sdk_client(server, key))
