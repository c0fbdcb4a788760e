"""`GET /v1/models` (SPEC §3.4) through the SDK and `GET /v1/balance` (SPEC §6)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from harness import PRICES, WELCOME_CREDITS, Gateway, sdk_client


@pytest.mark.parametrize("mode", ["test", "developer"])
def test_models_list_in_the_openai_shape_with_prices(start_quota, mode):
    server = start_quota()
    account = server.register()
    client = sdk_client(server, account.create_key(mode))
    models = {m.id: m for m in client.models.list()}
    for required in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o4-mini", "gpt-5-mini"):
        assert required in models, f"{required} missing from /v1/models"
    mini = models["gpt-4o-mini"]
    assert mini.object == "model"
    assert mini.owned_by == "openai"
    assert isinstance(mini.created, int) and mini.created > 0
    pricing = mini.model_extra["pricing"]
    # Credits per 1M tokens → USD per 1K tokens: ÷ 1e6 credits per USD, × 1e3 / 1e6 tokens.
    assert Decimal(str(pricing["prompt_per_1k_tokens"])) == Decimal(PRICES["gpt-4o-mini"]["input"]) / 10**9
    assert Decimal(str(pricing["completion_per_1k_tokens"])) == Decimal(PRICES["gpt-4o-mini"]["output"]) / 10**9


def test_balance_shape_for_each_key_mode(sandbox: Gateway):
    dev_key = sandbox.account.create_key("developer")
    with sandbox.server.http() as h:
        for key, mode in ((sandbox.key, "test"), (dev_key, "developer")):
            r = h.get("/v1/balance", headers={"X-API-Key": key})
            assert r.status_code == 200, r.text
            assert r.json() == {
                "wallet": "developer",
                "balance": WELCOME_CREDITS,
                "developer_balance": WELCOME_CREDITS,
                "plan": "free",
                "user_id": sandbox.account.user_id,
                "billing_mode": mode,
            }
