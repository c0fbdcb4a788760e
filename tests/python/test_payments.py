"""Top-ups through Stripe webhooks, checked against the official ``stripe`` library (SPEC §10.1).

The events are signed with the library's own signature routine and checked with its own
verifier (``stripe.WebhookSignature.verify_header``), so Quota's ``Stripe-Signature``
verification is held to Stripe's algorithm by code Quota did not write: what the library accepts
Quota credits (exactly once), what the library refuses Quota refuses with 400 and no change.
"""

from __future__ import annotations

import datetime
import json
import time

import pytest
import stripe

WEBHOOK_SECRET = "whsec_pyTestWebhookSecret0123456789abcdef"
SECRET_KEY = "sk_test_pyTestSecretKey0123456789abcdef"


def stripe_gateway(start_quota):
    server = start_quota(
        QUOTA_PAYMENTS_PROVIDER="stripe",
        QUOTA_STRIPE_SECRET_KEY=SECRET_KEY,
        QUOTA_STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        # Never called by these tests: webhooks only.
        QUOTA_STRIPE_API_BASE="http://127.0.0.1:9",
    )
    server.secrets += [SECRET_KEY, WEBHOOK_SECRET]
    return server


def completed_event(event_id: str, session_id: str, user_id: str) -> str:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "checkout.session.completed",
            "data": {
                "object": {
                    "id": session_id,
                    "object": "checkout.session",
                    "payment_status": "paid",
                    "metadata": {"quota_user_id": user_id, "quota_package_id": "starter", "quota_credits": "4050000"},
                }
            },
        }
    )


def stripe_header(payload: str, secret: str, t: int) -> str:
    """``Stripe-Signature`` computed by the stripe library's own routine."""
    sig = stripe.WebhookSignature._compute_signature(f"{t}.{payload}", secret)
    return f"t={t},v1={sig}"


def send(server, payload: str, header: str):
    with server.http() as h:
        return h.post(
            "/webhooks/stripe",
            content=payload.encode(),
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )


def balance(account) -> int:
    with account.server.http() as h:
        r = h.get("/auth/me", headers={"Authorization": f"Bearer {account.session_token}"})
    assert r.status_code == 200, r.text
    return r.json()["balance"]


def test_an_event_the_stripe_library_accepts_credits_exactly_once(start_quota):
    server = stripe_gateway(start_quota)
    account = server.register()
    before = balance(account)
    payload = completed_event("evt_py_1", "cs_test_py_1", account.user_id)
    header = stripe_header(payload, WEBHOOK_SECRET, int(time.time()))
    # The library itself accepts this signature and parses the event.
    event = stripe.Webhook.construct_event(payload, header, WEBHOOK_SECRET)
    assert event["type"] == "checkout.session.completed"
    for _ in range(3):
        r = send(server, payload, header)
        assert r.status_code == 200, r.text
    assert balance(account) == before + 4_050_000
    topups = [t for t in server.transfers() if t["kind"] == "topup"]
    assert len(topups) == 1 and topups[0]["amount"] == 4_050_000


@pytest.mark.parametrize(
    "secret,age_secs",
    [("whsec_someoneElsesSecret0123456789", 0), (WEBHOOK_SECRET, 301), (WEBHOOK_SECRET, 3600)],
    ids=["forged", "stale-301s", "stale-1h"],
)
def test_what_the_stripe_library_refuses_quota_refuses(start_quota, secret, age_secs):
    server = stripe_gateway(start_quota)
    account = server.register()
    before = balance(account)
    payload = completed_event("evt_py_bad", "cs_test_py_bad", account.user_id)
    header = stripe_header(payload, secret, int(time.time()) - age_secs)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload, header, WEBHOOK_SECRET, tolerance=300)
    r = send(server, payload, header)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "bad_request"
    assert balance(account) == before
    assert not [t for t in server.transfers() if t["kind"] == "topup"]


def test_quota_payouts_run_with_a_date(start_quota):
    server = start_quota(QUOTA_PAYMENTS_PROVIDER="dev")
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    done = server.cli("payouts", "run", "--date", today)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["errors"] == 0 and report["paid"] == []
    future = server.cli("payouts", "run", "--date", "2999-01-01")
    assert future.returncode != 0
