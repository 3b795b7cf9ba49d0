"""sandbox/web/webhooks.py: signatures of every format (with published test vectors), replays,
timestamps, bodies changed after signing, unknown hooks, payload parsing; a refused delivery
records nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path

import pytest

from sandbox.settings import Hook, Pipeline
from sandbox.state import StateDB
from sandbox.web.webhooks import WebhookError, parse_push, read_secret, receive, verify

SHA = "a" * 40
SECRET = "It's a Secret to Everybody"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = 1_700_000_000.0
STAGING = Pipeline(recipe="web")


def hook(fmt: str = "github", **kw: object) -> Hook:
    args: dict[str, object] = {
        "name": "web",
        "format": fmt,
        "secret_env": "HOOK_SECRET",
        "branches": {"main": STAGING, "release/1.x": Pipeline(recipe="web", promote="prod")},
    }
    return Hook(**{**args, **kw})  # type: ignore[arg-type]


ENV = {"HOOK_SECRET": SECRET}
SENV = {"HOOK_SECRET": WHSEC}


def push(branch: str = "main", sha: str = SHA, **extra: object) -> bytes:
    return json.dumps({"ref": f"refs/heads/{branch}", "after": sha, "before": "0" * 40, **extra}).encode()


def github(body: bytes, secret: str = SECRET, delivery: str = "d-1", event: str = "push") -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={sig}", "X-GitHub-Delivery": delivery, "X-GitHub-Event": event}


def gitea(body: bytes, secret: str = SECRET, delivery: str = "d-1") -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Gitea-Signature": sig, "X-Gitea-Delivery": delivery, "X-Gitea-Event": "push"}


def standard(body: bytes, ts: float = NOW, msg_id: str = "msg_1", secret: str = WHSEC) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{int(ts)}.".encode() + body, hashlib.sha256).digest())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(ts)),
        "webhook-signature": "v1," + sig.decode(),
    }


@pytest.fixture
def state(tmp_path: Path) -> StateDB:
    return StateDB(tmp_path / "state.db")


def recorded(state: StateDB) -> list[tuple[str, str]]:
    with state.transaction(write=False) as c:
        return [(r[0], r[1]) for r in c.execute("SELECT hook, delivery FROM hook_deliveries")]


def refused(state: StateDB, status: int, words: str, *args: object, **kw: object) -> WebhookError:
    with pytest.raises(WebhookError) as e:
        receive(*args, state=state, **kw)  # type: ignore[misc]
    assert e.value.status == status, e.value.message
    assert words in e.value.message, e.value.message
    assert recorded(state) == []
    return e.value


# -- published test vectors ------------------------------------------------------------------------


def test_githubs_documented_vector() -> None:
    # GitHub's docs ("Validating webhook deliveries"): this secret and payload give this signature
    body = b"Hello, World!"
    headers = {
        "X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "X-GitHub-Delivery": "x",
    }
    assert verify(hook(), SECRET.encode(), headers, body, NOW) == "x"


STD_ID, STD_TS, STD_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
STD_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def std_headers(sig: str = STD_SIG, ts: int = STD_TS) -> dict[str, str]:
    return {"webhook-id": STD_ID, "webhook-timestamp": str(ts), "webhook-signature": sig}


@pytest.mark.parametrize("secret", [WHSEC, WHSEC.removeprefix("whsec_")])
def test_the_standard_webhooks_vector(secret: str) -> None:
    # the Standard Webhooks reference libraries' test vector (with and without the whsec_ prefix)
    key = read_secret(hook("standard"), {"HOOK_SECRET": secret})
    assert verify(hook("standard"), key, std_headers(), STD_BODY, STD_TS) == STD_ID
    # ... one changed character of the signature, as in their invalid-signature test
    with pytest.raises(WebhookError, match="no valid v1 signature"):
        verify(hook("standard"), key, std_headers(STD_SIG[:-2] + "A="), STD_BODY, STD_TS)


def test_standard_accepts_any_one_valid_of_several_signatures() -> None:
    key = read_secret(hook("standard"), SENV)
    bogus = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    several = " ".join([bogus, "v2," + bogus[3:], STD_SIG, "v1a,xyz", bogus])
    assert verify(hook("standard"), key, std_headers(several), STD_BODY, STD_TS) == STD_ID
    with pytest.raises(WebhookError):
        verify(hook("standard"), key, std_headers(" ".join([bogus, "v1a," + STD_SIG[3:]])), STD_BODY, STD_TS)


@pytest.mark.parametrize(
    ("skew", "ok"), [(-300, True), (300, True), (-301, False), (301, False), (-86400, False)]
)
def test_standard_timestamp_tolerance(skew: int, ok: bool) -> None:
    key = read_secret(hook("standard"), SENV)
    now = STD_TS - skew  # the delivery's timestamp is `skew` s from now
    if ok:
        verify(hook("standard"), key, std_headers(), STD_BODY, now)
    else:
        with pytest.raises(WebhookError, match="off from now"):
            verify(hook("standard"), key, std_headers(), STD_BODY, now)


# -- every format: valid, wrong, missing, body changed -------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "env", "sign"),
    [
        ("github", ENV, github),
        ("gitea", ENV, gitea),
        ("standard", SENV, standard),
    ],
)
def test_signed_formats(state: StateDB, fmt: str, env: dict[str, str], sign: object) -> None:
    body = push()
    headers = sign(body)  # type: ignore[operator]
    hooks = [hook(fmt)]
    other = "whsec_" + base64.b64encode(b"w" * 24).decode() if fmt == "standard" else "nope"
    wrong = sign(body, secret=other)  # type: ignore[operator]
    refused(state, 401, "", hooks, "web", wrong, body, environ=env, now=NOW)
    changed = body.replace(b"main", b"mainx")
    refused(state, 401, "", hooks, "web", headers, changed, environ=env, now=NOW)
    signature_header = next(k for k in headers if "ignature" in k)
    missing = {k: v for k, v in headers.items() if k != signature_header}
    refused(state, 401, "missing", hooks, "web", missing, body, environ=env, now=NOW)
    d = receive(hooks, "web", headers, body, state, environ=env, now=NOW)
    assert (d.branch, d.commit, d.pipeline, d.ignored) == ("main", SHA, STAGING, None)
    assert recorded(state) == [("web", d.id)]


@pytest.mark.parametrize(
    "header", ["sha256=", "sha256=XYZ", "sha1=" + "a" * 40, "sha256=" + "A" * 64, "sha256=" + "é" * 64]
)
def test_a_malformed_github_signature(state: StateDB, header: str) -> None:
    body = push()
    headers = {**github(body), "X-Hub-Signature-256": header}
    refused(state, 401, "malformed", [hook()], "web", headers, body, environ=ENV, now=NOW)


def test_gitlab_token_only_when_the_hook_says_so(state: StateDB) -> None:
    body = push()
    headers = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event-UUID": "u-1", "X-Gitlab-Event": "Push Hook"}
    refused(state, 401, "missing X-Hub-Signature-256", [hook("github")], "web", headers, body, environ=ENV)
    wrong = {**headers, "X-Gitlab-Token": "guess"}
    refused(state, 401, "wrong X-Gitlab-Token", [hook("gitlab-token")], "web", wrong, body, environ=ENV)
    missing = {"X-Gitlab-Event-UUID": "u-2"}
    refused(state, 401, "missing X-Gitlab-Token", [hook("gitlab-token")], "web", missing, body, environ=ENV)
    d = receive([hook("gitlab-token")], "web", headers, body, state, environ=ENV, now=NOW)
    assert d.commit == SHA


# -- replay, unknown hook, size, ids ---------------------------------------------------------------


def test_a_replayed_delivery_is_refused(state: StateDB) -> None:
    body = push()
    receive([hook()], "web", github(body), body, state, environ=ENV, now=NOW)
    with pytest.raises(WebhookError) as e:
        receive([hook()], "web", github(body), body, state, environ=ENV, now=NOW + 5)
    assert e.value.status == 409 and "already received" in e.value.message
    assert len(recorded(state)) == 1
    other = hook(name="other")
    receive([other], "other", github(body), body, state, environ=ENV, now=NOW)  # ids are per hook


def test_a_replayed_standard_delivery_within_the_window_is_refused(state: StateDB) -> None:
    body = push()
    receive([hook("standard")], "web", standard(body), body, state, environ=SENV, now=NOW)
    with pytest.raises(WebhookError, match="already received"):
        receive([hook("standard")], "web", standard(body), body, state, environ=SENV, now=NOW + 60)


@pytest.mark.parametrize("name", ["nope", "", "../web", "WEB", "x" * 500, None])
def test_an_unknown_hook(state: StateDB, name: object) -> None:
    e = refused(state, 404, "unknown hook", [hook()], name, github(push()), push(), environ=ENV)
    assert len(e.message) < 80


def test_an_oversized_body(state: StateDB) -> None:
    body = push(padding="x" * 2048)
    refused(
        state, 413, "over the hook's limit", [hook(max_body=1024)], "web", github(body), body, environ=ENV
    )


@pytest.mark.parametrize("delivery", ["", "a b", "x" * 129, "../../x", "id;rm"])
def test_a_malformed_delivery_id(state: StateDB, delivery: str) -> None:
    body = push()
    refused(
        state, 400, "X-GitHub-Delivery", [hook()], "web", github(body, delivery=delivery), body, environ=ENV
    )


# -- payloads --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "ignored"),
    [
        (push("feature"), "no pipeline for branch 'feature'"),
        (json.dumps({"ref": "refs/tags/v1", "after": SHA}).encode(), "a tag push"),
        (push(sha="0" * 40), "the branch was deleted"),
    ],
)
def test_pushes_that_run_nothing_are_ignored_and_recorded(state: StateDB, body: bytes, ignored: str) -> None:
    d = receive([hook()], "web", github(body), body, state, environ=ENV, now=NOW)
    assert d.ignored == ignored and d.pipeline is None and len(recorded(state)) == 1


def test_a_ping_is_ignored(state: StateDB) -> None:
    body = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'
    d = receive([hook()], "web", github(body, event="ping"), body, state, environ=ENV, now=NOW)
    assert d.ignored is not None and "ping" in d.ignored


def test_a_branch_maps_to_its_pipeline_and_a_sha256_repo_works(state: StateDB) -> None:
    body = push("release/1.x", sha="b" * 64)
    d = receive([hook()], "web", github(body), body, state, environ=ENV, now=NOW)
    assert (
        d.branch == "release/1.x"
        and d.commit == "b" * 64
        and d.pipeline == Pipeline(recipe="web", promote="prod")
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"ref": "refs/heads/main", "ref": "refs/heads/evil", "after": "' + SHA.encode() + b'"}', "twice"),
        (json.dumps({"ref": "refs/heads/main"}).encode(), "not a push payload"),
        (json.dumps({"ref": 5, "after": SHA}).encode(), "not a push payload"),
        (push(sha="A" * 40), "not a 40 or 64 hex"),
        (push(sha="a" * 39), "not a 40 or 64 hex"),
        (push(sha=SHA + "; rm -rf /"), "not a 40 or 64 hex"),
        (push("../../etc"), "not a branch"),
        (push("main;reboot"), "not a branch"),
        (push("$(id)"), "not a branch"),
        (push("-rf"), "not a branch"),
        (push("a..b"), "not a branch"),
        (json.dumps({"ref": "refs/remotes/x", "after": SHA}).encode(), "not a branch"),
    ],
)
def test_malformed_payloads_are_refused(state: StateDB, body: bytes, words: str) -> None:
    refused(state, 400, words, [hook()], "web", github(body), body, environ=ENV, now=NOW)


def test_a_standard_envelope_is_unwrapped() -> None:
    body = json.dumps({"type": "push", "timestamp": "x", "data": {"ref": "refs/heads/main", "after": SHA}})
    assert parse_push(body.encode()) == ("main", SHA, None)


# -- secrets ---------------------------------------------------------------------------------------


def test_a_secret_file_must_be_private(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    os.chmod(f, 0o600)
    assert read_secret(hook(secret_env=None, secret_file=str(f))) == SECRET.encode()
    os.chmod(f, 0o644)
    with pytest.raises(WebhookError, match="only its owner reads"):
        read_secret(hook(secret_env=None, secret_file=str(f)))
    link = tmp_path / "link"
    link.symlink_to(f)
    with pytest.raises(WebhookError, match="cannot read"):
        read_secret(hook(secret_env=None, secret_file=str(link)))


@pytest.mark.parametrize(
    ("fmt", "env", "words"),
    [
        ("github", {}, "empty"),
        ("github", {"HOOK_SECRET": "x" * 5000}, "longer than"),
        ("standard", {"HOOK_SECRET": "whsec_not base64!"}, "not base64"),
        ("standard", {"HOOK_SECRET": "whsec_" + base64.b64encode(b"short").decode()}, "24-64 bytes"),
    ],
)
def test_bad_secrets_are_a_server_error_that_names_no_secret(
    fmt: str, env: dict[str, str], words: str
) -> None:
    with pytest.raises(WebhookError) as e:
        read_secret(hook(fmt), env)
    assert e.value.status == 500 and words in e.value.message and "HOOK_SECRET" in e.value.message
    assert not any(v and v in e.value.message for v in env.values())
