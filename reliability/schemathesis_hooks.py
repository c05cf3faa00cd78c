"""Schemathesis hooks for offramp (loaded through SCHEMATHESIS_HOOKS by schemathesis_run.py).

- Every request to a CDS service carries a FRESH JWT, as an EHR sends one per call (CDS Hooks 2.0
  security): ES384, header {alg, typ: "JWT", kid}, claims iss, sub, aud (the URL of the endpoint
  called), iat = now, exp = now + 60 s and a new jti. The auth provider puts one on each generated
  case, and `before_call` mints a new one just before each network call, so a case that is sent
  again (shrinking, a check's probe, a replay) never trips the replay guard with a used jti.
  A token schemathesis removed or replaced on purpose (negative testing, the ignored_auth check)
  is left as it is: only our own tokens are refreshed.
- GET /admin/stats gets `Authorization: Bearer <admin token>`.
- The real example requests (cds-hooks/examples/requests/*.json) are added as explicit examples
  of POST /cds-services/{id}, so the 200-with-cards paths are exercised, not only refusals.

Configuration comes from the environment, set by schemathesis_run.py:
OFFRAMP_ST_KEY_FILE (PEM private key), OFFRAMP_ST_KID, OFFRAMP_ST_ISS, OFFRAMP_ST_PUBLIC_BASE
(the service's server.public_base_url), OFFRAMP_ST_ADMIN_TOKEN, OFFRAMP_ST_EXAMPLES (directory).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import jwt
import schemathesis

ISS = os.environ["OFFRAMP_ST_ISS"]
KID = os.environ["OFFRAMP_ST_KID"]
PUBLIC_BASE = os.environ["OFFRAMP_ST_PUBLIC_BASE"].rstrip("/")
ADMIN_TOKEN = os.environ["OFFRAMP_ST_ADMIN_TOKEN"]
# Where the service listens (for the calls that make calendar pages to test).
SERVICE_URL = os.environ.get("OFFRAMP_ST_URL", "").rstrip("/")
EXAMPLES_DIR = os.environ.get("OFFRAMP_ST_EXAMPLES", "")
PRIVATE_KEY = Path(os.environ["OFFRAMP_ST_KEY_FILE"]).read_text()

# Token lifetime: the service accepts exp - iat up to auth.max_lifetime_seconds (300).
LIFETIME_SECONDS = 60

JWT_PATHS = {"/cds-services/{id}", "/cds-services/{id}/feedback"}
ADMIN_PATHS = {"/admin/stats"}

_lock = threading.Lock()
_minted: set[str] = set()
_counts = {"jwt_minted": 0, "jwt_refreshed_before_call": 0, "examples_added": 0}
# Every response seen, by operation and status: the runner reports the 5xx among them.
_responses: dict[str, dict[str, int]] = {}
_server_errors: list[dict] = []
# Requests that carried valid credentials (a token we minted, or the admin token) and still got
# 401: the auth hook itself would be broken, and every such request would test nothing.
_valid_auth_refused: list[dict] = []
STATS_FILE = os.environ.get("OFFRAMP_ST_STATS_FILE", "")


def _sent_path(case) -> str:
    """The path as it goes on the wire (path parameters percent-encoded, as the service sees it)."""
    params = case.path_parameters or {}
    path = case.operation.path
    for name, value in params.items():
        path = path.replace("{" + name + "}", quote(str(value), safe=""))
    return path


def mint(case) -> str:
    return mint_for(_sent_path(case))


def mint_for(path: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISS,
        "sub": "schemathesis",
        "aud": PUBLIC_BASE + path,
        "iat": now,
        "exp": now + LIFETIME_SECONDS,
        "jti": str(uuid.uuid4()),
    }
    token = jwt.encode(claims, PRIVATE_KEY, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})
    with _lock:
        _minted.add(token)
        _counts["jwt_minted"] += 1
    return token


def _is_ours_unlocked(value: object) -> bool:
    return isinstance(value, str) and value.startswith("Bearer ") and value[len("Bearer ") :] in _minted


def _is_ours(value: object) -> bool:
    with _lock:
        return _is_ours_unlocked(value)


@schemathesis.auth(refresh_interval=None, retry_on=[])
class OfframpAuth:
    """A new JWT for each case of a CDS service; the admin token for /admin/*; nothing elsewhere."""

    def get(self, case, context):
        path = case.operation.path
        if path in JWT_PATHS:
            return ("jwt", mint(case))
        if path in ADMIN_PATHS:
            return ("admin", ADMIN_TOKEN)
        return None

    def set(self, case, data, context):
        if data is None:
            return
        _kind, token = data
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {token}"


@schemathesis.hook
def before_call(context, case, kwargs):
    """Re-mint our JWT right before the request leaves, so iat/exp/jti are fresh on every call.

    The aud is recomputed too: a case's path parameters may have changed since the token was put
    on it (shrinking, a map hook).
    """
    if case.operation.path not in JWT_PATHS or not case.headers:
        return
    for name in list(case.headers):
        if name.lower() == "authorization" and _is_ours(case.headers[name]):
            case.headers[name] = f"Bearer {mint(case)}"
            with _lock:
                _counts["jwt_refreshed_before_call"] += 1


def _example_requests() -> list[tuple[str, dict]]:
    if not EXAMPLES_DIR:
        return []
    out = []
    for f in sorted(Path(EXAMPLES_DIR).glob("*.json")):
        if f.name.endswith(".expected.json"):
            continue
        body = json.loads(f.read_text())
        out.append((f"offramp-{body['hook']}", body))
    return out


def _calendar_ids() -> list[str]:
    """Calendar pages made by sending the example requests: ids of real pages to GET.

    Generated ids only ever find 404; these give the 200 text/html path its checks.
    """
    import requests

    ids = []
    for service, body in _example_requests():
        path = f"/cds-services/{service}"
        r = requests.post(
            SERVICE_URL + path,
            json=body,
            headers={"Authorization": f"Bearer {mint_for(path)}"},
            timeout=15,
        )
        if r.status_code != 200:
            continue
        for card in r.json().get("cards", []):
            for link in card.get("links", []):
                url = link.get("url", "")
                if "/calendar/" in url:
                    ids.append(url.rsplit("/", 1)[-1])
    return ids


@schemathesis.hook
def before_add_examples(context, examples):
    """The real example requests, each at the service of its hook, as explicit examples; for the
    calendar, the pages those requests made."""
    operation = context.operation
    if operation is None:
        return
    if operation.method.upper() == "GET" and operation.path == "/calendar/{id}" and SERVICE_URL:
        for calendar_id in _calendar_ids()[:3]:
            examples.append(operation.Case(path_parameters={"id": calendar_id}))
            with _lock:
                _counts["examples_added"] += 1
        return
    if operation.method.upper() != "POST" or operation.path != "/cds-services/{id}":
        return
    for service, body in _example_requests():
        case = operation.Case(
            path_parameters={"id": service},
            body=body,
            media_type="application/json",
        )
        case.headers = {"Authorization": f"Bearer {mint(case)}"}
        # As the auth provider's own cases are marked: valid credentials, not generated ones (the
        # ignored_auth check then probes them without and with a wrong token).
        case._has_explicit_auth = True
        examples.append(case)
        with _lock:
            _counts["examples_added"] += 1


@schemathesis.hook
def after_call(context, case, response):
    label = f"{case.operation.method.upper()} {case.operation.path}"
    status = response.status_code
    with _lock:
        per = _responses.setdefault(label, {})
        per[str(status)] = per.get(str(status), 0) + 1
        sent = response.request.headers.get("Authorization")
        valid = _is_ours_unlocked(sent) or sent == f"Bearer {ADMIN_TOKEN}"
        if status == 401 and valid and len(_valid_auth_refused) < 50:
            _valid_auth_refused.append({"operation": label, "path": _sent_path(case)})
        if status >= 500 and len(_server_errors) < 50:
            _server_errors.append(
                {
                    "operation": label,
                    "status": status,
                    "path": _sent_path(case),
                    "body": response.text[:500],
                }
            )


@atexit.register
def _write_stats() -> None:
    if not STATS_FILE:
        return
    with _lock:
        data = {
            "counts": dict(_counts),
            "responses": _responses,
            "server_errors": _server_errors,
            "valid_auth_refused": _valid_auth_refused,
        }
    Path(STATS_FILE).write_text(json.dumps(data, indent=1, sort_keys=True))


@schemathesis.check
def unauthorized_has_challenge(ctx, response, case):
    """Every 401 carries a Bearer challenge (RFC 9110 §15.5.2, RFC 6750 §3).

    openapi.json declares the WWW-Authenticate header on each 401, but utoipa cannot mark a
    response header required, so response_headers_conformance alone would not miss it.
    """
    if response.status_code != 401:
        return None
    values = response.headers.get("www-authenticate") or []
    if not values or not values[0].lower().startswith("bearer"):
        raise AssertionError(f"401 without a Bearer WWW-Authenticate challenge (got {values!r})")
    return True
