"""The dashboard (SPEC §11) end to end in headless Chromium, driven by Playwright.

The browser is Debian's ``/usr/bin/chromium`` (``scripts/test`` installs it when missing);
Playwright never downloads one. Each test starts its own ``quota serve``. Screenshots of every
page at desktop (1280 px) and phone (390 px) widths are saved under
``target/dashboard-screenshots/`` (gitignored) as test artifacts.
"""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from harness import PASSWORD, REPO, QuotaServer, sdk_client

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO / "target" / "dashboard-screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
EXPECT_TIMEOUT_MS = 10_000


def usd(credits: int) -> str:
    """Dollars as the dashboard writes them: at least two decimals, at most six."""
    sign = "−" if credits < 0 else ""
    whole, frac = divmod(abs(credits), 1_000_000)
    frac_text = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${whole}.{frac_text}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/test, which installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))

    def console(m) -> None:
        # CSP violations and script errors. Pages answering 4xx to bad input are expected and
        # logged by Chromium as "Failed to load resource"; sub-resources are checked below.
        if m.type == "error" and not m.text.startswith("Failed to load resource"):
            errors.append(f"{m.text} ({m.location.get('url')})")

    def response(r) -> None:
        # The dev provider's checkout page (not the dashboard's) has no icon: /favicon.ico 404s.
        if r.request.resource_type != "document" and r.status >= 400 and not r.url.endswith("/favicon.ico"):
            errors.append(f"{r.status} for {r.url}")

    p.on("console", console)
    p.on("response", response)
    yield p
    context.close()
    assert not errors, f"browser errors (CSP violations, script errors): {errors}"


def shoot(page: Page, name: str) -> None:
    """Save the current page at desktop and phone widths."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.screenshot(path=str(SHOTS / f"{name}-{label}.png"), full_page=True)
        if label == "phone":
            # Nothing may be wider than a phone: tables scroll inside their own box.
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{name} overflows a phone screen by {overflow}px"
    page.set_viewport_size(DESKTOP)


def sign_up(page: Page, server: QuotaServer, email: str) -> None:
    page.goto(server.url + "/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/signin"))
    page.get_by_role("link", name="Create an account").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(server.url + "/dashboard")
    expect(page.locator("#balance")).to_have_text("$1.00")


def create_sandbox_key(page: Page, server: QuotaServer, name: str) -> str:
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Billing mode").select_option(label="Sandbox")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text().strip()
    assert secret.startswith("sk-quota-"), secret
    server.secrets.append(secret)
    return secret


def test_sandbox_request_shows_up_with_its_charge_and_the_new_balance(start_quota, page: Page):
    server = start_quota()
    sign_up(page, server, "e2e-sandbox@example.com")
    shoot(page, "overview-empty")

    secret = create_sandbox_key(page, server, "e2e sandbox")
    expect(page.get_by_role("button", name="Copy")).to_be_visible()  # the script ran under the CSP
    expect(page.get_by_role("cell", name="Sandbox").first).to_be_visible()
    shoot(page, "keys-secret-revealed")

    client = sdk_client(server, secret)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello dashboard"}], max_tokens=20
    )
    quota = reply.model_extra["quota"]
    assert quota["sandbox"] is True and quota["credits_used"] > 0
    request_id = quota["request_id"]

    page.get_by_role("link", name="Overview").click()
    expect(page.locator("#balance")).to_have_text(usd(quota["balance_after"]))
    expect(page.locator("#spend-today")).to_have_text(usd(quota["credits_used"]))
    row = page.get_by_role("row").filter(has_text=request_id)
    expect(row).to_contain_text("gpt-4o-mini")
    expect(row).to_contain_text(usd(quota["credits_used"]))
    expect(row).to_contain_text("Sandbox")
    expect(page.locator("#spend-chart rect.bar").last).to_have_attribute(
        "aria-label", re.compile(re.escape(usd(quota["credits_used"])) + "$")
    )
    page.locator("#spend-chart rect.bar").last.hover()
    expect(page.locator("#spend-chart-readout")).to_contain_text(usd(quota["credits_used"]))
    # Keyboard: the first Tab lands on the skip link; a bar with spend is a tab stop that
    # shows its value when focused.
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.locator("#spend-chart-readout").evaluate("el => el.textContent = ''")
    page.locator("#spend-chart rect.bar[tabindex='0']").focus()
    expect(page.locator("#spend-chart-readout")).to_contain_text(usd(quota["credits_used"]))
    shoot(page, "overview")

    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Usage").click()
    page.get_by_label("Mode", exact=True).select_option(label="Sandbox")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("row").filter(has_text=request_id)).to_be_visible()
    csv_link = page.get_by_role("link", name="Download CSV")
    with page.expect_download() as download:
        csv_link.click()
    csv_text = Path(download.value.path()).read_text()
    assert request_id in csv_text and ",test," in csv_text
    shoot(page, "usage")

    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Ledger").click()
    charge = page.get_by_role("row").filter(has_text=request_id)
    expect(charge).to_contain_text("sandbox_charge")
    expect(charge).to_contain_text(usd(-quota["credits_used"]))
    shoot(page, "ledger")

    for nav, name in (("Earnings", "payouts"), ("Wallet", "wallet")):
        page.get_by_role("navigation", name="Dashboard").get_by_role("link", name=nav).click()
        shoot(page, name)
    expect(page.locator("#wallet-balance")).to_have_text(usd(quota["balance_after"]))


def test_an_app_with_a_markup_shows_what_a_user_pays(start_quota, page: Page):
    server = start_quota()
    sign_up(page, server, "e2e-apps@example.com")
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Apps").click()
    page.get_by_label("Name").fill("Acme Chat")
    page.get_by_label("Redirect URIs").fill("http://localhost:3000/callback")
    page.get_by_label("Markup, %").fill("25")
    page.get_by_role("button", name="Create app").click()
    secret = page.locator("#new-secret").inner_text().strip()
    assert secret.startswith("quota_secret_")
    server.secrets.append(secret)
    shoot(page, "apps")

    page.get_by_role("link", name="Acme Chat").click()
    # gpt-4o-mini, 1,000 input + 500 output tokens: 450 credits base; +25% → 563 (rounded up).
    expect(page.locator("#example-total-0")).to_have_text("$0.000563")
    expect(page.locator("#example-total-1")).to_have_text("$1.25")
    markup = page.get_by_label("Markup, %")
    markup.fill("50")  # the live example follows the typing (the page script)
    expect(page.locator("#example-total-0")).to_have_text("$0.000675")
    expect(page.locator("#example-total-1")).to_have_text("$1.50")
    page.get_by_role("button", name="Save markup").click()
    expect(page.get_by_role("status")).to_contain_text("Markup and welcome credits saved")
    expect(page.locator("#example-total-0")).to_have_text("$0.000675")  # now computed by the server
    shoot(page, "app-detail")

    markup.fill("lots")
    page.get_by_role("button", name="Save markup").click()
    expect(page.get_by_role("alert")).to_contain_text("markup must be a percentage")
    with server.http() as h:
        apps = h.get(
            "/developers/apps", headers={"Authorization": f"Bearer {server_session(page)}"}
        ).json()["data"]
    assert apps[0]["profit_margin"] == 0.5, "the bad value changed nothing"
    shoot(page, "app-detail-error")


def server_session(page: Page) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == "quota_session")


class Receiver:
    """A loopback webhook endpoint that records each POST and answers 200."""

    def __init__(self):
        self.received: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                outer.received.append(self.rfile.read(int(self.headers.get("content-length", "0"))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_a_webhook_endpoint_shows_its_delivery(start_quota, page: Page):
    receiver = Receiver()
    try:
        server = start_quota()
        sign_up(page, server, "e2e-hooks@example.com")
        page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Webhooks").click()
        page.get_by_label("URL").fill(receiver.url)
        page.get_by_label("Description").fill("local receiver")
        page.get_by_role("button", name="Add endpoint").click()
        secret = page.locator("#new-secret").inner_text().strip()
        assert secret.startswith("whsec_")
        server.secrets.append(secret)
        shoot(page, "webhooks")

        page.get_by_role("link", name=receiver.url).click()
        page.get_by_role("button", name="Send test event").click()
        expect(page.get_by_role("status")).to_contain_text("Test event queued")
        deadline = time.monotonic() + 15
        while not receiver.received:
            assert time.monotonic() < deadline, "no delivery reached the receiver"
            time.sleep(0.05)
        row = page.get_by_role("row").filter(has_text="webhook.test")
        for _ in range(100):
            page.reload()
            if "succeeded" in row.inner_text() or "delivered" in row.inner_text():
                break
            time.sleep(0.1)
        expect(row).to_contain_text(re.compile("succeeded|delivered"))
        expect(row).to_contain_text("HTTP 200")
        shoot(page, "webhook-deliveries")

        row.get_by_role("button", name="Replay").click()
        expect(page.get_by_role("status")).to_contain_text("Delivery queued again")
        deadline = time.monotonic() + 15
        while len(receiver.received) < 2:
            assert time.monotonic() < deadline, "the replay never arrived"
            time.sleep(0.05)
    finally:
        receiver.close()


def test_forms_reject_bad_input_visibly_and_change_nothing(start_quota, page: Page):
    server = start_quota()
    sign_up(page, server, "e2e-bad@example.com")
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("limited")
    page.get_by_label("Rate limit, requests per minute").fill("lots")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("alert")).to_contain_text("whole number")
    expect(page.get_by_label("Name")).to_have_value("limited")  # the form keeps what was typed
    expect(page.get_by_text("No keys yet.")).to_be_visible()
    shoot(page, "keys-error")

    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Webhooks").click()
    page.get_by_label("URL").fill("ftp://example.com/hook")
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_text("No endpoints yet.")).to_be_visible()

    page.goto(server.url + "/dashboard/usage?from=2025-02-30")
    expect(page.get_by_role("alert")).to_contain_text("from must be a date")


def test_sign_in_sign_out_and_everything_without_javascript(start_quota, browser: Browser):
    server = start_quota()
    account = server.register("e2e-nojs@example.com")
    context = browser.new_context(viewport=PHONE, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(server.url + "/dashboard/keys")
        expect(page).to_have_url(re.compile(r"/dashboard/signin\?next=%2Fdashboard%2Fkeys"))
        page.get_by_label("Email").fill(account.email)
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("email or password is incorrect")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(server.url + "/dashboard/keys")  # back where the visitor was going
        page.get_by_label("Name").fill("no-js key")
        page.get_by_role("button", name="Create key").click()
        secret = page.locator("#new-secret").inner_text().strip()
        server.secrets.append(secret)
        expect(page.get_by_role("button", name="Copy")).to_be_hidden()  # needs the script
        page.get_by_role("button", name="Revoke").click()
        expect(page.get_by_role("status")).to_contain_text("Key revoked")
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(r"/dashboard/signin"))
        page.goto(server.url + "/dashboard")
        expect(page).to_have_url(re.compile(r"/dashboard/signin"))
        shoot(page, "signin")
    finally:
        context.close()


def test_top_up_through_checkout_credits_the_wallet(start_quota, page: Page):
    server = start_quota(QUOTA_PAYMENTS_PROVIDER="dev")
    sign_up(page, server, "e2e-topup@example.com")
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Wallet").click()
    page.get_by_role("button", name=re.compile("^Buy Starter")).click()
    page.get_by_role("button", name="Pay now").click()  # the dev provider's checkout page
    expect(page).to_have_url(re.compile(r"/dashboard/wallet\?topup=success"))
    expect(page.locator("#wallet-balance")).to_have_text("$5.05")  # $1.00 welcome + $4.05
    shoot(page, "wallet-topped-up")
