"""User billing via OAuth (SPEC §5, §6) driven by a real OAuth client library, ``authlib``, against
a running ``quota serve``: authorization code + PKCE with Quota's own sign-in and consent pages
submitted over HTTP as a browser would (cookies, hidden fields, CSRF token), refresh with
rotation, the ``openai`` SDK paying with the user's token, and the id_token verified against the
JWKS (``joserfc``, authlib's JOSE library). Then the negative space, each through the same
library where a client would meet it."""

from __future__ import annotations

import dataclasses
import secrets
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlparse

import httpx
import openai
import pytest
from authlib.integrations.httpx_client import OAuth2Client
from authlib.integrations.base_client.errors import OAuthError
from joserfc import jwt
from joserfc.jwk import KeySet

from fake_openai import Reply, Usage
from harness import HTTP_TIMEOUT_SECS, PASSWORD, QuotaServer, UPSTREAM_KEY, cost, sdk_client

REDIRECT_URI = "http://127.0.0.1:8765/callback"
SCOPE = "openid email credits.read credits.spend"


class Forms(HTMLParser):
    """The forms of a page: each one's inputs (name → value) and its submit buttons."""

    def __init__(self, html: str):
        super().__init__()
        self.forms: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action"), "fields": {}, "buttons": []})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value") or ""
        elif tag == "button" and self.forms and a.get("name"):
            self.forms[-1]["buttons"].append((a["name"], a.get("value") or ""))


@dataclasses.dataclass
class App:
    id: str
    client_id: str
    client_secret: str | None
    developer_session: str


def create_app(server: QuotaServer, session: str, **extra) -> App:
    body = {"name": "Acme Chat", "redirect_uris": [REDIRECT_URI], "allowed_scopes": SCOPE.split()}
    body.update(extra)
    with server.http() as h:
        r = h.post("/developers/apps", json=body, headers={"Authorization": f"Bearer {session}"})
    assert r.status_code == 201, r.text
    app = r.json()
    if app["client_secret"]:
        server.secrets.append(app["client_secret"])
    return App(app["id"], app["client_id"], app["client_secret"], session)


def oauth_client(server: QuotaServer, app: App, **kwargs) -> OAuth2Client:
    return OAuth2Client(
        client_id=app.client_id,
        client_secret=app.client_secret,
        scope=kwargs.pop("scope", SCOPE),
        redirect_uri=REDIRECT_URI,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_post" if app.client_secret else "none",
        timeout=HTTP_TIMEOUT_SECS,
        **kwargs,
    )


def browser(server: QuotaServer) -> httpx.Client:
    """A browser: keeps cookies, does not follow redirects (the test reads each Location)."""
    return httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_SECS, follow_redirects=False)


def sign_in_and_consent(b: httpx.Client, authorize_url: str, email: str, decision: str = "approve") -> httpx.Response:
    """Open the authorization URL signed out, sign in on Quota's page, then press a consent
    button. Returns the response to the consent form (a redirect to the app)."""
    page = b.get(authorize_url)
    assert page.status_code == 200, page.text
    login = next(f for f in Forms(page.text).forms if f["fields"].get("action") == "login")
    assert login["fields"]["csrf_token"], "the sign-in form carries a CSRF token"
    fields = dict(login["fields"], email=email, password=PASSWORD)
    signed_in = b.post(login["action"], data=fields)
    assert signed_in.status_code == 303, signed_in.text
    consent = b.get(signed_in.headers["location"])
    assert consent.status_code == 200, consent.text
    assert "Acme Chat" in consent.text
    form = next(f for f in Forms(consent.text).forms if ("action", decision) in f["buttons"])
    return b.post(form["action"], data=dict(form["fields"], action=decision))


def authorize(server: QuotaServer, app: App, client: OAuth2Client, email: str):
    """The whole authorization-code + PKCE flow; returns (token dict, code)."""
    verifier = secrets.token_urlsafe(48)
    uri, state = client.create_authorization_url(
        f"{server.url}/oauth/authorize", code_verifier=verifier, nonce="n-42"
    )
    with browser(server) as b:
        back = sign_in_and_consent(b, uri, email)
    assert back.status_code == 303, back.text
    location = back.headers["location"]
    assert location.startswith(REDIRECT_URI)
    query = parse_qs(urlparse(location).query)
    assert query["state"] == [state]
    token = client.fetch_token(
        f"{server.url}/oauth/token", authorization_response=location, code_verifier=verifier, state=state
    )
    server.secrets.extend([token["access_token"], token["refresh_token"], query["code"][0]])
    return token, query["code"][0], verifier


@pytest.fixture
def gateway(start_quota, fake_upstream):
    """A gateway proxying to the fake OpenAI upstream (user-mode calls go upstream)."""
    return start_quota(QUOTA_OPENAI_BASE_URL=fake_upstream.base_url, OPENAI_API_KEY=UPSTREAM_KEY)


def test_authlib_runs_the_whole_flow_then_refreshes_then_pays_with_the_openai_sdk(gateway: QuotaServer, fake_upstream):
    developer = gateway.register()
    app = create_app(gateway, developer.session_token)
    with gateway.http() as h:
        r = h.patch(
            f"/developers/apps/{app.id}/settings",
            json={"profit_margin": 0.25},
            headers={"Authorization": f"Bearer {developer.session_token}"},
        )
    assert r.status_code == 200 and r.json()["profit_margin_bps"] == 2500
    user = gateway.register()
    client = oauth_client(gateway, app)
    token, _, _ = authorize(gateway, app, client, user.email)
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    assert token["access_token"].startswith("quota_token_")
    assert token["scope"] == SCOPE

    # The id_token's signature checks out against the JWKS, and its claims are the user's.
    with gateway.http() as h:
        discovery = h.get("/.well-known/openid-configuration")
        # No public_url: the URLs come from the request's Host, so no cache may keep them.
        assert discovery.headers["cache-control"] == "no-store"
        jwks = h.get(discovery.json()["jwks_uri"].replace(gateway.url, "")).json()
    decoded = jwt.decode(token["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256"])
    assert decoded.header["alg"] == "RS256"
    claims = decoded.claims
    assert claims["sub"] == user.user_id and claims["aud"] == app.client_id
    assert claims["iss"] == gateway.url and claims["nonce"] == "n-42"
    assert claims["email"] == user.email
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": gateway.url}, aud={"essential": True, "value": app.client_id}
    ).validate(claims)

    # userinfo through the library's session, with the balance claim.
    client.token = token
    info = client.get(f"{gateway.url}/oauth/userinfo").json()
    assert info == {"sub": user.user_id, "email": user.email, "email_verified": False, "balance": 1_000_000}

    # Refresh: new tokens; the old access token is still good until it expires, the old
    # refresh token is spent.
    refreshed = client.refresh_token(f"{gateway.url}/oauth/token", refresh_token=token["refresh_token"])
    gateway.secrets.extend([refreshed["access_token"], refreshed["refresh_token"]])
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert refreshed["access_token"] != token["access_token"]

    # The OpenAI SDK with the user's token: the user pays base + markup.
    fake_upstream.push(Reply(pieces=("Hi",), usage=Usage(1000, 500, 0, 0)))
    sdk = sdk_client(gateway, refreshed["access_token"])
    reply = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello " * 200}], max_tokens=600
    )
    quota = reply.model_extra["quota"]
    base = cost("gpt-4o-mini", 1000, 500)
    assert base == 450
    assert (quota["base_cost"], quota["markup"], quota["credits_used"]) == (450, 113, 563)
    assert quota["billing_mode"] == "user"
    assert quota["balance_after"] == 1_000_000 - 563
    moves = [(t["from_account"], t["to_account"], t["amount"], t["kind"]) for t in gateway.transfers(cause=quota["request_id"])]
    assert moves == [
        (user.wallet, "platform:revenue", 450, "usage_charge"),
        (user.wallet, f"earnings_pending:{developer.user_id}", 113, "markup"),
    ]
    with gateway.http() as h:
        bal = h.get("/v1/balance", headers={"Authorization": f"Bearer {refreshed['access_token']}"}).json()
    assert bal == {
        "wallet": "oauth_user",
        "balance": 1_000_000 - 563,
        "plan": "free",
        "user_id": user.user_id,
        "billing_mode": "user",
    }
    with gateway.http() as h:
        users = h.get(
            f"/developers/apps/{app.id}/users", headers={"Authorization": f"Bearer {developer.session_token}"}
        ).json()["data"]
    assert [(u["user_id"], u["spend"], u["balance"]) for u in users] == [(user.user_id, 563, 1_000_000 - 563)]


def test_a_public_client_uses_pkce_without_a_secret(gateway: QuotaServer):
    developer = gateway.register()
    app = create_app(gateway, developer.session_token, token_endpoint_auth_method="none")
    assert app.client_secret is None
    user = gateway.register()
    token, _, _ = authorize(gateway, app, oauth_client(gateway, app), user.email)
    assert token["access_token"].startswith("quota_token_")


def test_reused_code_and_reused_refresh_token_revoke_what_they_issued(gateway: QuotaServer):
    developer = gateway.register()
    app = create_app(gateway, developer.session_token)
    user = gateway.register()
    client = oauth_client(gateway, app)
    token, code, verifier = authorize(gateway, app, client, user.email)
    sdk = sdk_client(gateway, token["access_token"])
    assert sdk.with_raw_response.models.list().http_response.status_code == 200
    # The same code again: refused, and the tokens it issued stop working.
    with pytest.raises(OAuthError) as e:
        client.fetch_token(
            f"{gateway.url}/oauth/token", code=code, code_verifier=verifier, grant_type="authorization_code"
        )
    assert e.value.error == "invalid_grant"
    with pytest.raises(openai.AuthenticationError) as e:
        sdk.models.list()
    assert e.value.code == "invalid_token"

    # A fresh grant: refresh once, then replay the first refresh token: the grant is revoked.
    token, _, _ = authorize(gateway, app, client, user.email)
    refreshed = client.refresh_token(f"{gateway.url}/oauth/token", refresh_token=token["refresh_token"])
    gateway.secrets.extend([refreshed["access_token"], refreshed["refresh_token"]])
    with pytest.raises(OAuthError) as e:
        client.refresh_token(f"{gateway.url}/oauth/token", refresh_token=token["refresh_token"])
    assert e.value.error == "invalid_grant"
    with pytest.raises(openai.AuthenticationError):
        sdk_client(gateway, refreshed["access_token"]).models.list()
    with pytest.raises(OAuthError) as e:
        client.refresh_token(f"{gateway.url}/oauth/token", refresh_token=refreshed["refresh_token"])
    assert e.value.error == "invalid_grant"


def test_a_wrong_pkce_verifier_is_refused(gateway: QuotaServer):
    developer = gateway.register()
    app = create_app(gateway, developer.session_token)
    user = gateway.register()
    client = oauth_client(gateway, app)
    verifier = secrets.token_urlsafe(48)
    uri, state = client.create_authorization_url(f"{gateway.url}/oauth/authorize", code_verifier=verifier)
    with browser(gateway) as b:
        location = sign_in_and_consent(b, uri, user.email).headers["location"]
    for wrong in (secrets.token_urlsafe(48), None):
        with pytest.raises(OAuthError) as e:
            client.fetch_token(
                f"{gateway.url}/oauth/token", authorization_response=location, code_verifier=wrong, state=state
            )
        assert e.value.error == "invalid_grant"


def test_unregistered_redirect_uris_are_never_redirected_to(gateway: QuotaServer):
    developer = gateway.register()
    app = create_app(gateway, developer.session_token)
    for evil in ("https://evil.example.com/callback", REDIRECT_URI + "/../x", REDIRECT_URI + "?next=//evil.example.com"):
        client = OAuth2Client(client_id=app.client_id, redirect_uri=evil, scope=SCOPE)
        uri, _ = client.create_authorization_url(f"{gateway.url}/oauth/authorize")
        with browser(gateway) as b:
            r = b.get(uri)
        assert r.status_code == 400
        assert "location" not in r.headers
        assert "not one this app registered" in r.text


def test_consent_denied_and_csrf_forgery(gateway: QuotaServer):
    developer = gateway.register()
    app = create_app(gateway, developer.session_token)
    user = gateway.register()
    client = oauth_client(gateway, app)
    uri, state = client.create_authorization_url(f"{gateway.url}/oauth/authorize", code_verifier="v" * 43)
    with browser(gateway) as b:
        back = sign_in_and_consent(b, uri, user.email, decision="deny")
    query = parse_qs(urlparse(back.headers["location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == [state] and "code" not in query

    # A forged consent post (the right session cookie, no or another session's CSRF token).
    with browser(gateway) as b:
        page = b.get(uri)
        login = next(f for f in Forms(page.text).forms if f["fields"].get("action") == "login")
        b.post(login["action"], data=dict(login["fields"], email=user.email, password=PASSWORD))
        consent = b.get(uri)
        form = next(f for f in Forms(consent.text).forms if ("action", "approve") in f["buttons"])
        for token in ("", "0" * 64, login["fields"]["csrf_token"]):
            r = b.post(form["action"], data=dict(form["fields"], csrf_token=token, action="approve"))
            assert r.status_code == 403, r.text
            assert "location" not in r.headers
    with gateway.http() as h:
        conns = h.get("/account/connections", headers={"Authorization": f"Bearer {user.session_token}"}).json()
    assert conns["data"] == []


def test_scopes_app_mismatch_and_disconnect_through_the_sdk(gateway: QuotaServer):
    developer = gateway.register()
    app = create_app(gateway, developer.session_token)
    user = gateway.register()
    token, _, _ = authorize(gateway, app, oauth_client(gateway, app, scope="openid credits.read"), user.email)
    sdk = sdk_client(gateway, token["access_token"])
    with pytest.raises(openai.PermissionDeniedError) as e:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert e.value.code == "insufficient_scope"

    # A token of this app with another developer's `user` key.
    stranger = gateway.register()
    their_key = stranger.create_key("user")
    token, _, _ = authorize(gateway, app, oauth_client(gateway, app), user.email)
    mixed = sdk_client(gateway, token["access_token"], default_headers={"X-API-Key": their_key})
    with pytest.raises(openai.PermissionDeniedError) as e:
        mixed.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert e.value.code == "app_mismatch"

    # The user disconnects the app: its token stops at once.
    ok = sdk_client(gateway, token["access_token"])
    assert ok.with_raw_response.models.list().http_response.status_code == 200
    with gateway.http() as h:
        r = h.delete(f"/account/connections/{app.id}", headers={"Authorization": f"Bearer {user.session_token}"})
    assert r.status_code == 200
    with pytest.raises(openai.AuthenticationError) as e:
        ok.models.list()
    assert e.value.code == "invalid_token"


def test_funding_a_connected_user_with_an_idempotency_key(gateway: QuotaServer):
    developer = gateway.register()
    key = developer.create_key("developer")
    app = create_app(gateway, developer.session_token)
    user = gateway.register()
    authorize(gateway, app, oauth_client(gateway, app), user.email)
    body = {"user_id": user.user_id, "amount": 200_000, "description": "launch promo"}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "promo-1"}
    with gateway.http() as h:
        first = h.post("/v1/funding/oauth_user", json=body, headers=headers)
        again = h.post("/v1/funding/oauth_user", json=body, headers=headers)
        conflict = h.post("/v1/funding/oauth_user", json=dict(body, amount=1), headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["balance_after"] == 1_200_000 and first.json()["success"] is True
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
    moves = [t for t in gateway.transfers() if t["kind"] == "funding"]
    assert [(t["from_account"], t["to_account"], t["amount"]) for t in moves] == [
        (developer.wallet, user.wallet, 200_000)
    ]
