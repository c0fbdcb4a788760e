"""Webhooks and usage (SPEC §8, §9) against a running ``quota serve``: a local receiver verifies
every delivery with the Standard Webhooks reference library (``standardwebhooks``) and with a
plain HMAC-SHA256 check; a failed first attempt is retried with the same event id; sandbox
usage arrives as ``usage.completed`` with ``sandbox: true``; ``GET /v1/usage`` as CSV matches
its JSON."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
from standardwebhooks.webhooks import Webhook

from harness import Gateway

MODEL = "gpt-4o-mini"


class Receiver:
    """A loopback HTTP server recording each POST; it answers 500 to the first ``fail_first``."""

    def __init__(self, fail_first: int = 0):
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(outer.received) <= outer.fail_first
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"not yet" if failing else b"ok")

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 15.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < n:
            assert time.monotonic() < deadline, f"got {len(self.received)} deliveries, expected {n}"
            time.sleep(0.02)
        return list(self.received)

    def close(self) -> None:
        self.server.shutdown()


def session_headers(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.account.session_token}"}


def test_deliveries_verify_with_standardwebhooks_and_hmac_and_are_retried(sandbox: Gateway):
    receiver = Receiver(fail_first=1)
    try:
        with sandbox.server.http() as h:
            r = h.post(
                "/v1/webhooks",
                json={"url": receiver.url, "events": ["usage.completed"], "description": "python"},
                headers=session_headers(sandbox),
            )
            assert r.status_code == 201, r.text
            secret = r.json()["secret"]
            sandbox.server.secrets.append(secret)

        completion = sandbox.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        # The first attempt fails (500); the retry comes about 5 s later with the same event.
        deliveries = receiver.wait_for(2)
        wh = Webhook(secret)
        ids = set()
        for headers, body in deliveries:
            event = wh.verify(body, headers)  # raises if the Standard Webhooks signature is wrong
            expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["x-quota-signature"], expected)
            assert event["type"] == "usage.completed"
            assert event["sandbox"] is True
            assert event["data"]["sandbox"] is True
            assert event["data"]["model"] == MODEL
            assert event["data"]["total"] > 0
            ids.add(event["id"])
        assert len(ids) == 1 and ids.pop().startswith("evt_")
        # A tampered body does not verify.
        headers, body = deliveries[0]
        try:
            wh.verify(body.replace(b"usage", b"usagE"), headers)
            raise AssertionError("a tampered body verified")
        except Exception as e:  # the library's WebhookVerificationError
            assert "AssertionError" not in type(e).__name__
        assert completion.id
    finally:
        receiver.close()


def test_usage_csv_matches_json(sandbox: Gateway):
    for i in range(3):
        sandbox.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x " * (i + 1)}], max_tokens=4 + i
        )
    with httpx.Client(base_url=sandbox.server.url, timeout=30) as h:
        as_json = h.get("/v1/usage", headers={"Authorization": f"Bearer {sandbox.key}"}).json()["data"]
        text = h.get("/v1/usage?format=csv", headers=session_headers(sandbox)).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(as_json) == 3
    for row, rec in zip(rows, as_json):
        assert row["id"] == rec["id"]
        assert int(row["total"]) == rec["total"]
        assert row["model"] == rec["model"] == MODEL
        assert row["sandbox"] == "true" and rec["sandbox"] is True
    assert json.dumps(as_json).find("hi") == -1  # no prompt text in usage records
