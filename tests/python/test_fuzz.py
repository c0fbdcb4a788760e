"""A property-based fuzzing run over Quota's generated OpenAPI document (issue 19).

schemathesis (pinned in requirements.in) reads ``/openapi.json`` from a fresh ``quota serve``
(SQLite, the ``dev`` payment provider, a sandbox key and a session), generates requests for
every operation from their schemas, valid and invalid, and checks every answer:

* ``not_a_server_error``: no 5xx;
* ``response_schema_conformance``: the body matches the documented schema of its status
  (every error the §13 shape);
* ``content_type_conformance``: the documented media type (no plain-text errors).

The run is bounded and seeded (``FUZZ_SECONDS``, ``FUZZ_SEED``, ``FUZZ_EXAMPLES``): the same
inputs each time, a few minutes at most. Afterwards the money is checked against what the
client saw: every sandbox charge in the ledger belongs to a 2xx inference answer whose
``quota.credits_used`` is that charge, and no refused request was charged. The fixture then
runs ``quota ledger verify`` on the database.

Locally: ``scripts/test python -k fuzz`` (or ``FUZZ_SECONDS=600 …`` for a longer run).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "120"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "19"))
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"

# A quota object anywhere in an answer (a JSON body, or an SSE stream's last event).
QUOTA_OBJECT = re.compile(r'\{[^{}]*"credits_used"[^{}]*\}')
INFERENCE = re.compile(r"^/(v1/chat/completions|v1/messages|v1/responses|v1/embeddings|v1beta/models/.+|v1/models/.+)$")


def _body_text(content: dict) -> str:
    text = content.get("text") or ""
    if content.get("encoding") == "base64":
        text = base64.b64decode(text).decode("utf-8", "replace")
    return text


def answered_charges(har_path: Path) -> dict[str, int]:
    """`request_id → credits_used` of every 2xx inference answer the fuzzer received."""
    answered: dict[str, int] = {}
    for entry in json.loads(har_path.read_text("utf-8"))["log"]["entries"]:
        path = "/" + entry["request"]["url"].split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
        if not 200 <= entry["response"]["status"] < 300 or not INFERENCE.match(path):
            continue
        for match in QUOTA_OBJECT.findall(_body_text(entry["response"]["content"])):
            quota = json.loads(match)
            # An idempotent replay repeats the first answer, request id included.
            answered[quota["request_id"]] = quota["credits_used"]
    return answered


def wallet_balance(server, account) -> int:
    with server.http() as h:
        r = h.get("/auth/me", headers={"Authorization": f"Bearer {account.session_token}"})
    assert r.status_code == 200, r.text
    return r.json()["balance"]


@pytest.mark.timeout(FUZZ_SECONDS + 300)
def test_schemathesis_finds_no_server_error_schema_violation_or_charge_for_a_refused_request(start_quota, tmp_path):
    server = start_quota(QUOTA_PAYMENTS_PROVIDER="dev")
    developer = server.register("fuzz@example.com")
    key = developer.create_key("test", "fuzz")
    before = wallet_balance(server, developer)

    har = tmp_path / "fuzz.har"
    started = time.monotonic()
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{server.url}/openapi.json",
            "--seed", str(FUZZ_SEED),
            "--max-examples", str(FUZZ_EXAMPLES),
            "--max-time", str(FUZZ_SECONDS),
            "--workers", "2",
            "--checks", CHECKS,
            "--generation-database", "none",
            # /oauth/authorize's query is mostly filtered out (its parameters are one raw query string).
            "--suppress-health-check", "filter_too_much",
            # Signing out would end the session the rest of the run uses.
            "--exclude-path", "/auth/logout",
            # Management routes take the session as the bearer, inference routes the key as X-API-Key.
            "--header", f"Authorization: Bearer {developer.session_token}",
            "--header", f"X-API-Key: {key}",
            "--report", "har",
            "--report-har-path", str(har),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 240,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,  # schemathesis keeps a cache directory where it runs
    )
    elapsed = time.monotonic() - started
    summary = run.stdout[-12000:]
    print(f"schemathesis ran {elapsed:.0f}s (seed {FUZZ_SEED}):\n{summary}")
    assert run.returncode == 0, f"schemathesis found problems (exit {run.returncode}):\n{summary}\n{run.stderr[-4000:]}"

    # The money: every charge of the sandbox wallet is a 2xx answer's credits_used, and nothing
    # else took credits from it.
    answered = {rid: c for rid, c in answered_charges(har).items() if c > 0}
    assert answered, "the run made no successful inference request: the document's examples are not usable"
    charged: dict[str, int] = {}
    other_debits = []
    for t in server.transfers():
        if t["from_account"] != developer.wallet:
            continue
        if t["kind"] == "sandbox_charge":
            charged[t["cause"]] = charged.get(t["cause"], 0) + t["amount"]
        else:
            other_debits.append(t)
    refused_but_charged = sorted(set(charged) - set(answered))
    assert not refused_but_charged, f"charged without a 2xx answer: {refused_but_charged[:10]}"
    assert charged == answered, "a charge differs from the quota.credits_used its answer showed"
    assert not other_debits, f"the sandbox wallet was debited otherwise: {other_debits[:5]}"
    print(f"{len(charged)} charged requests, {sum(charged.values())} credits, each matching its answer")
    # Top-ups: the dev provider's checkout may have been paid during the run.
    topups = sum(t["amount"] for t in server.transfers() if t["to_account"] == developer.wallet and t["kind"] == "topup")
    # Through the session: the run may have revoked or rotated the key (the key routes are fuzzed too).
    assert wallet_balance(server, developer) == before - sum(charged.values()) + topups, "the wallet moved by more than its charges"
