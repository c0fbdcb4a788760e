"""Errors surface as the OpenAI SDK's typed exceptions with the SPEC §13 codes, and none of them
charges anything (SPEC §0, §4.3.2)."""

from __future__ import annotations

import openai
import pytest

from fake_openai import Reply, Usage
from harness import Gateway, assert_charged, assert_not_charged, cost, quota_of, sdk_client

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Hello?"}]


@pytest.mark.parametrize(
    "bad_key",
    ["sk-quota-thisKeyWasNeverIssued0000000000", "not-a-quota-key", "session"],
    ids=["unknown", "malformed", "session-token"],
)
def test_bad_credentials_are_authentication_errors(sandbox: Gateway, bad_key):
    if bad_key == "session":
        bad_key = sandbox.account.session_token  # sessions never authorize /v1 (SPEC §2)
    before = sandbox.balance()
    transfers_before = len(sandbox.server.transfers())
    client = sdk_client(sandbox.server, bad_key)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.body["type"]
    # SPEC §14: the error links to its section of the page the gateway serves.
    assert info.value.body["docs_url"] == "/docs/errors#invalid_api_key"
    with sandbox.server.http() as h:
        page = h.get("/docs/errors")
    assert page.status_code == 200 and '<section id="invalid_api_key">' in page.text
    assert_not_charged(sandbox, before, transfers_before, info.value.response.headers["x-request-id"])


def test_revoked_key_is_refused_at_once(sandbox: Gateway):
    key = sandbox.account.create_key("test", name="short-lived")
    client = sdk_client(sandbox.server, key)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    with sandbox.server.http() as h:
        listed = h.get("/developers/keys", headers={"Authorization": f"Bearer {sandbox.account.session_token}"})
        (key_id,) = [k["id"] for k in listed.json()["data"] if k["name"] == "short-lived"]
        r = h.delete(f"/developers/keys/{key_id}", headers={"Authorization": f"Bearer {sandbox.account.session_token}"})
        assert r.status_code in (200, 204), r.text
    before = sandbox.balance()
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.code == "invalid_api_key"
    assert sandbox.balance() == before


def test_unknown_model_is_not_found_in_the_sandbox(sandbox: Gateway):
    before = sandbox.balance()
    transfers_before = len(sandbox.server.transfers())
    with pytest.raises(openai.NotFoundError) as info:
        sandbox.client.chat.completions.create(model="gpt-nonexistent-9", messages=MESSAGES)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert_not_charged(sandbox, before, transfers_before, info.value.response.headers["x-request-id"])


def test_unknown_model_is_not_found_and_not_forwarded(proxy: Gateway, fake_upstream):
    before = proxy.balance()
    transfers_before = len(proxy.server.transfers())
    with pytest.raises(openai.NotFoundError) as info:
        proxy.client.chat.completions.create(model="gpt-nonexistent-9", messages=MESSAGES, stream=True)
    assert info.value.code == "model_not_found"
    assert fake_upstream.requests == []
    assert_not_charged(proxy, before, transfers_before, info.value.response.headers["x-request-id"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": MESSAGES, "max_tokens": 0},
        {"messages": MESSAGES, "extra_body": {"temperature": "hot"}},
    ],
    ids=["no-messages", "bad-role", "zero-max-tokens", "wrong-type"],
)
def test_bad_requests_are_400_bad_request(sandbox: Gateway, kwargs):
    before = sandbox.balance()
    transfers_before = len(sandbox.server.transfers())
    with pytest.raises(openai.BadRequestError) as info:
        sandbox.client.chat.completions.create(model=MODEL, **kwargs)
    assert info.value.status_code == 400
    assert info.value.code == "bad_request"
    assert_not_charged(sandbox, before, transfers_before, info.value.response.headers["x-request-id"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_empty_wallet_is_402_insufficient_credits(start_quota, stream):
    server = start_quota(QUOTA_WELCOME_CREDITS="0")
    account = server.register()
    assert account.initial_balance == 0
    key = account.create_key("test")
    gw = Gateway(server, account, key, sdk_client(server, key))
    transfers_before = len(server.transfers())
    with pytest.raises(openai.APIStatusError) as info:
        result = gw.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1, stream=stream)
        if stream:
            list(result)
    e = info.value
    assert type(e) is openai.APIStatusError  # the SDK has no subclass for 402
    assert e.status_code == 402
    assert e.code == "insufficient_credits"
    assert_not_charged(gw, 0, transfers_before, e.response.headers["x-request-id"])


def test_reservation_decides_402_and_nothing_reaches_the_upstream(start_proxy, fake_upstream):
    """50 credits cannot cover gpt-4o-mini's default output reservation (16,384 tokens ≈ 9,831
    credits), so the request is refused before the upstream is called; with max_tokens=20 the
    reservation fits and the metered cost is charged."""
    gw = start_proxy(QUOTA_WELCOME_CREDITS="50")
    assert gw.balance() == 50
    transfers_before = len(gw.server.transfers())
    with pytest.raises(openai.APIStatusError) as info:
        gw.client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.status_code == 402
    assert info.value.code == "insufficient_credits"
    assert fake_upstream.requests == []
    assert_not_charged(gw, 50, transfers_before, info.value.response.headers["x-request-id"])

    fake_upstream.push(Reply(usage=Usage(prompt_tokens=20, completion_tokens=10, cached_tokens=0, reasoning_tokens=0)))
    resp = gw.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20)
    assert len(fake_upstream.requests) == 1
    # 20 × 150000 + 10 × 600000 = 9,000,000 → 9
    assert_charged(gw, 50, quota_of(resp), cost(MODEL, 20, 10))
    assert gw.balance() == 41


def test_an_over_reporting_upstream_is_charged_the_hold_and_makes_no_debt(start_proxy, fake_upstream):
    """SPEC §4.3(3): an upstream that reports more than was held is charged at most the hold;
    the excess is the platform's loss, never the payer's debt."""
    gw = start_proxy(QUOTA_WELCOME_CREDITS="50")
    fake_upstream.push(Reply(usage=Usage(prompt_tokens=10, completion_tokens=1000, cached_tokens=0, reasoning_tokens=0)))
    resp = gw.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20)
    metered = cost(MODEL, 10, 1000)  # 1,500,000 + 600,000,000 → 602
    assert metered == 602
    charged = quota_of(resp)["credits_used"]
    assert 0 < charged < metered, "the payer pays the hold, not what the provider over-reported"
    assert gw.balance() == 50 - charged >= 0
    moves = sorted((t["from_account"], t["to_account"], t["amount"], t["kind"]) for t in gw.server.transfers(cause=quota_of(resp)["request_id"]))
    assert moves == sorted([
        (gw.account.wallet, "platform:revenue", charged, "usage_charge"),
        ("platform:losses", "platform:revenue", metered - charged, "loss"),
    ])
    # Drain what is left, so the next request cannot be held.
    fake_upstream.push(Reply(usage=Usage(prompt_tokens=10, completion_tokens=1000, cached_tokens=0, reasoning_tokens=0)))
    while gw.balance() > 0:
        try:
            gw.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        except openai.APIStatusError:
            break
        fake_upstream.push(Reply(usage=Usage(prompt_tokens=10, completion_tokens=1000, cached_tokens=0, reasoning_tokens=0)))
    assert gw.balance() >= 0
    calls = len(fake_upstream.requests)

    transfers_before = len(gw.server.transfers())
    with pytest.raises(openai.APIStatusError) as info:
        gw.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    assert info.value.status_code == 402
    assert info.value.code == "insufficient_credits"
    assert len(fake_upstream.requests) == calls
    err = info.value.response.json()["error"]
    assert err["required"] > err["available"] >= 0, err
    assert_not_charged(gw, gw.balance(), transfers_before, info.value.response.headers["x-request-id"])
