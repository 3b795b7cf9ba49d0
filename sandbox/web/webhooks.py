"""Signed webhooks from git hosting: check one delivery and turn it into (branch, commit, pipeline).

Formats (`hooks:` in sandbox.yaml, `format:`):
- github: `X-Hub-Signature-256: sha256=HEX`, HMAC-SHA256 of the raw body; id `X-GitHub-Delivery`.
- gitea: `X-Gitea-Signature: HEX` (Forgejo sends it too); id `X-Gitea-Delivery`.
- standard (Standard Webhooks; GitLab's signing token): `webhook-signature: v1,BASE64 ...` over
  `ID.TIMESTAMP.BODY` with the base64 secret (`whsec_...`), `webhook-timestamp` within the hook's
  tolerance of now; id `webhook-id`.
- gitlab-token: GitLab's plain `X-Gitlab-Token` (a shared password, no signature): only when a hook
  names this format. Id `X-Gitlab-Event-UUID`.

Every check runs before the body is parsed; signatures are compared with hmac.compare_digest. A
delivery id is recorded once per hook (kept 30 days): a replay is refused. Nothing is recorded for
a refused delivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.errors import SandboxError
from sandbox.settings import BRANCH_NAME, Hook, Pipeline
from sandbox.state import StateDB

KEEP_DELIVERIES = 30 * 86400.0
MAX_SECRET = 4096
_ID_RE = re.compile(r"[A-Za-z0-9_:-]{1,128}")
_SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_HEX_SIG = re.compile(r"[0-9a-f]{64}")
_HOOK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_ID_HEADER = {
    "github": "X-GitHub-Delivery",
    "gitea": "X-Gitea-Delivery",
    "standard": "webhook-id",
    "gitlab-token": "X-Gitlab-Event-UUID",
}
_EVENT_HEADER = {  # a standard-format hook from GitLab names its event too
    "github": "x-github-event",
    "gitea": "x-gitea-event",
    "standard": "x-gitlab-event",
    "gitlab-token": "x-gitlab-event",
}
_PUSH_EVENTS = {"push", "Push Hook"}


class WebhookError(SandboxError):
    """A delivery refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class Delivery:
    """A checked delivery: a push of `commit` to `branch` that runs `pipeline`, or one ignored
    (`ignored` says why: a ping, a tag, a deleted branch, a branch with no pipeline)."""

    hook: str
    id: str
    branch: str | None = None
    commit: str | None = None
    pipeline: Pipeline | None = None
    ignored: str | None = None


def find_hook(hooks: Sequence[Hook], name: object) -> Hook:
    if isinstance(name, str) and _HOOK_NAME.fullmatch(name):
        for h in hooks:
            if h.name == name:
                return h
    shown = repr(name) if len(repr(name)) <= 50 else repr(name)[:47] + "..."
    raise WebhookError(404, f"unknown hook {shown}", hint="hooks are configured under hooks: in sandbox.yaml")


def read_secret(hook: Hook, environ: Mapping[str, str] | None = None) -> bytes:
    """The hook's secret as the bytes its format signs with (standard: base64-decoded)."""
    where = f"secret of hook {hook.name}"
    if hook.secret_env is not None:
        raw = (os.environ if environ is None else environ).get(hook.secret_env, "").encode()
        where += f" (${hook.secret_env})"
    else:
        assert hook.secret_file is not None
        where += f" ({hook.secret_file})"
        try:
            fd = os.open(hook.secret_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                raw = f.read(MAX_SECRET + 1)
        except OSError as e:
            raise WebhookError(
                500, f"{where}: cannot read it: {e.strerror}", hint="make it a root-owned file"
            ) from e
        if not stat.S_ISREG(mode) or mode & 0o077:
            raise WebhookError(
                500, f"{where}: must be a regular file only its owner reads", hint="chmod 600 it"
            )
        raw = raw.rstrip(b"\r\n")
    if not raw or len(raw) > MAX_SECRET:
        raise WebhookError(
            500, f"{where}: empty or longer than {MAX_SECRET} bytes", hint="put the secret there"
        )
    if hook.format != "standard":
        return raw
    try:
        key = base64.b64decode(raw.removeprefix(b"whsec_"), validate=True)
    except binascii.Error as e:
        raise WebhookError(
            500, f"{where}: not base64 (whsec_...)", hint="copy it as the sender shows it"
        ) from e
    if not 24 <= len(key) <= 64:
        raise WebhookError(
            500, f"{where}: must decode to 24-64 bytes, not {len(key)}", hint="a whsec_ secret"
        )
    return key


def _sig(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def _hex_signature(header: str | None, prefix: str, secret: bytes, body: bytes, name: str) -> None:
    if header is None:
        raise WebhookError(401, f"missing {name} header", hint="set the hook's secret at the sender")
    value = header.strip()
    if not value.startswith(prefix) or not _HEX_SIG.fullmatch(value[len(prefix) :]):
        raise WebhookError(401, f"malformed {name} header", hint=f"expected {prefix}<64 hex digits>")
    if not hmac.compare_digest(value[len(prefix) :].encode(), _sig(secret, body).hex().encode()):
        raise WebhookError(401, f"wrong signature in {name}", hint="the sender's secret differs from ours")


def _standard_signature(h: Mapping[str, str], secret: bytes, body: bytes, now: float, tolerance: int) -> None:
    msg_id, ts, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    for name, value in (("webhook-id", msg_id), ("webhook-timestamp", ts), ("webhook-signature", sigs)):
        if value is None:
            raise WebhookError(
                401, f"missing {name} header", hint="a Standard Webhooks sender sets all three"
            )
    assert msg_id is not None and ts is not None and sigs is not None
    if not _ID_RE.fullmatch(msg_id):
        raise WebhookError(
            400, "malformed webhook-id header", hint="letters, digits, '_', ':', '-'; at most 128"
        )
    if not re.fullmatch(r"[0-9]{1,12}", ts):
        raise WebhookError(400, "malformed webhook-timestamp header", hint="seconds since the epoch")
    if abs(now - int(ts)) > tolerance:
        raise WebhookError(
            401,
            f"webhook-timestamp is {int(now - int(ts))} s off from now (at most {tolerance} s)",
            hint="a replayed or delayed delivery, or a clock off; check NTP on both sides",
        )
    expected = _sig(secret, f"{msg_id}.{ts}.".encode() + body)
    entries = sigs.split()
    if not entries or len(entries) > 10 or len(sigs) > 2048:
        raise WebhookError(
            401, "malformed webhook-signature header", hint="v1,BASE64 entries, space-separated"
        )
    for entry in entries:
        version, _, value = entry.partition(",")
        if version != "v1":
            continue  # v1a (asymmetric) and unknown versions are not ours to check
        try:
            got = base64.b64decode(value, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(got, expected):
            return
    raise WebhookError(401, "no valid v1 signature in webhook-signature", hint="the sender's secret differs")


def verify(hook: Hook, secret: bytes, headers: Mapping[str, str], body: bytes, now: float) -> str:
    """Check the delivery's signature (or token) and return its delivery id; WebhookError if not."""
    h = {k.lower(): v for k, v in headers.items()}
    if hook.format == "github":
        _hex_signature(h.get("x-hub-signature-256"), "sha256=", secret, body, "X-Hub-Signature-256")
    elif hook.format == "gitea":
        _hex_signature(h.get("x-gitea-signature"), "", secret, body, "X-Gitea-Signature")
    elif hook.format == "standard":
        _standard_signature(h, secret, body, now, hook.tolerance)
    else:
        token = h.get("x-gitlab-token")
        if token is None:
            raise WebhookError(
                401, "missing X-Gitlab-Token header", hint="set the hook's secret token in GitLab"
            )
        if not hmac.compare_digest(token.encode("utf-8", "replace"), secret):
            raise WebhookError(401, "wrong X-Gitlab-Token", hint="the token in GitLab differs from ours")
    delivery = h.get(_ID_HEADER[hook.format].lower())
    if delivery is None or not _ID_RE.fullmatch(delivery):
        raise WebhookError(
            400, f"missing or malformed {_ID_HEADER[hook.format]} header", hint="every delivery needs its id"
        )
    return delivery


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice")
    return dict(pairs)


def parse_push(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(branch, commit, None) of a push payload, or (None, None, why it is ignored)."""
    try:
        doc = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WebhookError(
            400, f"the body is not valid JSON: {str(e)[:80]}", hint="send application/json"
        ) from e
    if isinstance(doc, dict) and "ref" not in doc and isinstance(doc.get("data"), dict):
        doc = doc["data"]  # a Standard Webhooks envelope: {type, timestamp, data}
    if not isinstance(doc, dict):
        raise WebhookError(400, "the payload is not a JSON object", hint="send a push event")
    ref, after = doc.get("ref"), doc.get("checkout_sha") or doc.get("after")
    if not isinstance(ref, str) or not isinstance(after, str):
        raise WebhookError(
            400, "not a push payload: no string 'ref' and 'after'", hint="send push events only"
        )
    if ref.startswith("refs/tags/"):
        return None, None, "a tag push"
    branch = ref.removeprefix("refs/heads/")
    if branch == ref or not re.fullmatch(BRANCH_NAME, branch):
        raise WebhookError(400, f"ref {ref[:120]!r} is not a branch sandbox accepts", hint="refs/heads/NAME")
    if re.fullmatch(r"0{40}|0{64}", after):
        return branch, None, "the branch was deleted"
    if not _SHA_RE.fullmatch(after):
        raise WebhookError(
            400, f"commit {after[:80]!r} is not a 40 or 64 hex digit sha", hint="lowercase hex"
        )
    return branch, after, None


def receive(
    hooks: Sequence[Hook],
    name: str,
    headers: Mapping[str, str],
    body: bytes,
    state: StateDB,
    *,
    environ: Mapping[str, str] | None = None,
    now: float | None = None,
) -> Delivery:
    """Check a delivery to hook `name` and record its id; WebhookError (nothing recorded) if refused."""
    t = time.time() if now is None else now
    hook = find_hook(hooks, name)
    if len(body) > hook.max_body:
        raise WebhookError(413, f"body of {len(body)} bytes is over the hook's limit of {hook.max_body}")
    delivery = verify(hook, read_secret(hook, environ), headers, body, t)
    event = {k.lower(): v for k, v in headers.items()}.get(_EVENT_HEADER[hook.format])
    branch: str | None
    commit: str | None
    ignored: str | None
    if event is not None and event not in _PUSH_EVENTS:
        branch, commit, ignored = None, None, f"a {event[:40]!r} event, not a push"
    else:
        branch, commit, ignored = parse_push(body)
    pipeline = hook.branches.get(branch) if branch is not None and ignored is None else None
    if ignored is None and pipeline is None:
        ignored = f"no pipeline for branch {branch!r}"
    with state.transaction() as c:
        c.execute("DELETE FROM hook_deliveries WHERE ts < ?", (t - KEEP_DELIVERIES,))
        try:
            sql = "INSERT INTO hook_deliveries (hook, delivery, ts) VALUES (?, ?, ?)"
            c.execute(sql, (hook.name, delivery, t))
        except sqlite3.IntegrityError as e:
            raise WebhookError(
                409, f"delivery {delivery} was already received", hint="a replay is refused"
            ) from e
    return Delivery(hook.name, delivery, branch, commit, pipeline, ignored)
