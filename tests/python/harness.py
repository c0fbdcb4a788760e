"""The harness for driving a real ``quota serve`` with the official ``openai`` SDK.

Every test (through the fixtures in conftest.py) gets its own gateway process (own port, own temporary directory and SQLite file), so
balances start from a known value and tests are independent and parallel-safe. A gateway is
started with ``--port 0`` and is ready when it prints its ``Quota listening on http://…`` line;
at teardown it is stopped (SIGTERM, then SIGKILL if it lingers), ``quota ledger verify`` must exit
0 on its database, and its log must not contain any secret the test created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
QUOTA_BIN = Path(os.environ.get("QUOTA_BIN") or REPO / "target" / "debug" / "quota").resolve()

STARTUP_TIMEOUT_SECS = 30
STOP_TIMEOUT_SECS = 15
HTTP_TIMEOUT_SECS = 20

WELCOME_CREDITS = 1_000_000
PASSWORD = "correct horse battery staple"
# The upstream key given to gateways that proxy to the fake (its shape is OpenAI's).
UPSTREAM_KEY = "sk-proj-UPSTREAMsecret0123456789abcdefXYZ"

LISTENING = re.compile(r"Quota listening on (http://127\.0\.0\.1:\d+)")

# The upstream keys given to gateways that proxy to the Anthropic and Gemini fakes.
ANTHROPIC_UPSTREAM_KEY = "sk-ant-api03-UPSTREAMsecret0123456789abcdef"
GEMINI_UPSTREAM_KEY = "AIzaSyUPSTREAMsecret0123456789abcdefXYZ"

# Catalog prices, credits per 1M tokens (SPEC §4.1; the providers' list prices).
PRICES = {
    "gpt-4o-mini": {"input": 150_000, "cached": 75_000, "cache_write": 0, "output": 600_000},
    "anthropic/claude-sonnet-4.5": {"input": 3_000_000, "cached": 300_000, "cache_write": 3_750_000, "output": 15_000_000},
    "anthropic/claude-haiku-4.5": {"input": 1_000_000, "cached": 100_000, "cache_write": 1_250_000, "output": 5_000_000},
    "google/gemini-2.5-flash": {"input": 300_000, "cached": 75_000, "cache_write": 0, "output": 2_500_000},
}


def cost(
    model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0
) -> int:
    """SPEC §4.1: ceil((in × p_in + cached × p_cached + write × p_write + out × p_out) / 1e6), where
    ``prompt_tokens`` counts every prompt token (as OpenAI's does) and ``in`` excludes the cached
    and cache-write ones; ``completion_tokens`` includes reasoning/thinking tokens."""
    p = PRICES[model]
    numerator = (
        (prompt_tokens - cached_tokens - cache_write_tokens) * p["input"]
        + cached_tokens * p["cached"]
        + cache_write_tokens * p["cache_write"]
        + completion_tokens * p["output"]
    )
    return -(-numerator // 1_000_000)


def _clean_env() -> dict[str, str]:
    """The test process's environment without anything that would configure the gateway."""
    drop = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "OPENAI_BASE_URL"}
    return {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_") and k not in drop}


class QuotaServer:
    """One ``quota serve`` process on its own port and database."""

    def __init__(self, workdir: Path, env: dict[str, str | None]):
        self.workdir = workdir
        self.db_path = workdir / "quota.db"
        self.log_path = workdir / "quota.stderr.log"
        self.env = _clean_env()
        self.env.update(
            {
                "QUOTA_DATABASE_URL": f"sqlite://{self.db_path}",
                "QUOTA_BIND": "127.0.0.1",
                "QUOTA_WELCOME_CREDITS": str(WELCOME_CREDITS),
                "QUOTA_LOG_FORMAT": "text",
                # Tests make hundreds of requests per key and many accounts from one address;
                # the limits themselves are tested in the Rust suite (crates/server/tests).
                "QUOTA_RATE_LIMIT_PER_MINUTE": "1000000",
                "QUOTA_REGISTER_RATE_LIMIT_PER_MINUTE": "10000",
                "QUOTA_LOGIN_RATE_LIMIT_PER_MINUTE": "10000",
                # Webhook receivers in these tests listen on 127.0.0.1: private targets are
                # refused unless allowed explicitly (SPEC §8), whatever the bind address.
                "QUOTA_WEBHOOK_ALLOW_PRIVATE_URLS": "true",
                "NO_COLOR": "1",
            }
        )
        for k, v in env.items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = v
        self.secrets: list[str] = []
        self.clients: list[openai.OpenAI] = []
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        if not QUOTA_BIN.is_file():
            pytest.fail(
                f"quota binary not found at {QUOTA_BIN}: run `cargo build -p quota-server` "
                "or set QUOTA_BIN"
            )
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(QUOTA_BIN), "serve", "--port", "0"],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream) -> None:
            # Hand over stdout lines; keep draining after readiness so the pipe never fills.
            for raw in iter(stream.readline, b""):
                lines.put(raw.decode("utf-8", "replace"))
            lines.put(None)

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        seen = []
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT_SECS)
            except queue.Empty:
                self.stop()
                pytest.fail(f"quota serve printed no listening line in {STARTUP_TIMEOUT_SECS}s")
            if line is None:
                self.proc.wait(timeout=STOP_TIMEOUT_SECS)
                pytest.fail(
                    f"quota serve exited ({self.proc.returncode}) before listening; stdout={seen!r}\n"
                    f"stderr:\n{self.log_text()[-4000:]}"
                )
            seen.append(line)
            m = LISTENING.search(line)
            if m:
                self.url = m.group(1)
                return

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_SECS)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.stop()
        if getattr(self, "_log", None):
            self._log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(QUOTA_BIN), *args],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # --- the database, read-only: what the ledger actually wrote -----------------------------

    def transfers(self, cause: str | None = None) -> list[dict]:
        """Transfers in the ledger (all, or those caused by one request id)."""
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            con.row_factory = sqlite3.Row
            if cause is None:
                rows = con.execute("SELECT * FROM transfers ORDER BY seq").fetchall()
            else:
                rows = con.execute(
                    "SELECT * FROM transfers WHERE cause = ? ORDER BY seq", (cause,)
                ).fetchall()
            return [dict(r) for r in rows]
        finally:
            con.close()

    def wait_for_transfers(self, cause: str, timeout: float) -> list[dict]:
        """Poll the ledger (bounded) until a transfer caused by `cause` is committed; for charges
        made after the response ended (a client that left mid-stream)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.transfers(cause=cause)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no transfer for {cause} within {timeout}s")
            time.sleep(0.05)

    # --- HTTP helpers --------------------------------------------------------------------------

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_SECS)

    def register(self, email: str | None = None) -> "Account":
        email = email or f"dev-{uuid.uuid4().hex[:10]}@example.com"
        with self.http() as h:
            r = h.post("/auth/register", json={"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        body = r.json()
        self.secrets.append(body["session_token"])
        return Account(self, body["user"]["id"], email, body["session_token"], body["user"]["balance"])


@dataclasses.dataclass
class Account:
    server: QuotaServer
    user_id: str
    email: str
    session_token: str
    initial_balance: int

    @property
    def wallet(self) -> str:
        return f"wallet:{self.user_id}"

    def create_key(self, billing_mode: str, name: str | None = None) -> str:
        with self.server.http() as h:
            r = h.post(
                "/developers/keys",
                json={"name": name or f"{billing_mode} key", "billing_mode": billing_mode},
                headers={"Authorization": f"Bearer {self.session_token}"},
            )
        assert r.status_code == 201, r.text
        key = r.json()["key"]
        assert key.startswith("sk-quota-"), key
        self.server.secrets.append(key)
        return key

    def balance(self, key: str) -> int:
        with self.server.http() as h:
            r = h.get("/v1/balance", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_id"] == self.user_id
        return body["balance"]


@dataclasses.dataclass
class Gateway:
    """A started gateway with one account and one key of the requested mode."""

    server: QuotaServer
    account: Account
    key: str
    client: openai.OpenAI

    def balance(self) -> int:
        return self.account.balance(self.key)


def sdk_client(server: QuotaServer, key: str, **kwargs) -> openai.OpenAI:
    """The official SDK pointed at Quota. No retries: each call is exactly one request."""
    client = openai.OpenAI(
        api_key=key,
        base_url=f"{server.url}/v1",
        max_retries=0,
        timeout=HTTP_TIMEOUT_SECS,
        **kwargs,
    )
    server.clients.append(client)
    return client




# --- assertions about money ---------------------------------------------------------------------


def sse_events(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(event name, data) of each Server-Sent Event of a body, in order."""
    events, name, data = [], None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                events.append((name, "\n".join(data)))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        events.append((name, "\n".join(data)))
    return events


def post_sse(gw: Gateway, path: str, headers: dict[str, str], body: dict) -> list[tuple[str | None, str]]:
    """POST `body` to the gateway and read the streamed answer's events (see `sse_events`)."""
    with httpx.Client(base_url=gw.server.url, timeout=HTTP_TIMEOUT_SECS) as h:
        with h.stream("POST", path, headers=headers, json=body) as r:
            assert r.status_code == 200, r.read()
            return sse_events(r)


def quota_of(obj) -> dict:
    """The `quota` object (SPEC §3.5) of an SDK response or stream chunk (an extra field)."""
    extra = obj.model_extra or {}
    assert "quota" in extra, f"no `quota` object in {obj!r}"
    return extra["quota"]


def assert_charged(
    gw: Gateway,
    before: int,
    quota: dict,
    expected: int,
    *,
    to_account: str | None = None,
    kind: str | None = None,
) -> None:
    """The request whose `quota` object this is charged exactly `expected` credits: the object
    says so, /v1/balance agrees, and the ledger holds exactly one transfer for it, from the
    payer's wallet to the platform (sandbox) revenue account."""
    sandbox = quota["billing_mode"] == "test"
    to_account = to_account or ("platform:sandbox_revenue" if sandbox else "platform:revenue")
    kind = kind or ("sandbox_charge" if sandbox else "usage_charge")
    assert quota["credits_used"] == expected, quota
    assert quota["balance_before"] == before, quota
    assert quota["balance_after"] == before - expected, quota
    assert gw.balance() == before - expected
    transfers = gw.server.transfers(cause=quota["request_id"])
    assert [(t["from_account"], t["to_account"], t["amount"], t["kind"]) for t in transfers] == [
        (gw.account.wallet, to_account, expected, kind)
    ]


def assert_not_charged(gw: Gateway, before: int, transfers_before: int, request_id: str) -> None:
    """Nothing moved: same balance, no new transfer, none caused by this request."""
    assert gw.balance() == before
    assert len(gw.server.transfers()) == transfers_before
    assert gw.server.transfers(cause=request_id) == []


@contextlib.contextmanager
def refused_without_charge(gw: Gateway, error_type: type[BaseException]):
    """Expect the block to raise `error_type` (any SDK's error carrying the HTTP `response`), and
    nothing to be charged for it: ``with refused_without_charge(gw, SomeError) as info: …``."""
    before = gw.balance()
    transfers_before = len(gw.server.transfers())
    with pytest.raises(error_type) as info:
        yield info
    assert_not_charged(gw, before, transfers_before, info.value.response.headers["x-request-id"])


def read_sse(response: httpx.Response) -> list[str]:
    """The `data` payloads of a Server-Sent Events body, one per event, in order. Asserts that
    every non-blank line is a `data:` field (OpenAI sends nothing else on this route)."""
    events, data = [], []
    for line in response.iter_lines():
        if line == "":
            if data:
                events.append("\n".join(data))
                data = []
            continue
        assert line.startswith("data:"), f"unexpected SSE line {line!r}"
        data.append(line[5:].removeprefix(" "))
    if data:
        events.append("\n".join(data))
    return events
