"""The root side's RPC methods: a fixed table, each call authenticated by the caller's session or
token and authorized with `may()` here, with every argument checked again. The HTTP side holds no
state and no secret but the session and token strings its clients send.

Errors carry the HTTP status the HTTP side answers with: 400 a bad argument, 401 no valid
credentials, 403 not allowed, 404 unknown, 409 a state conflict, 429 rate limited.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from sandbox.config.names import env_profile_name
from sandbox.errors import NotFound, SandboxError
from sandbox.settings import Hook
from sandbox.state import StateDB
from sandbox.web import timeline
from sandbox.web.auth import Auth, AuthError, RateLimited
from sandbox.web.envactions import promote_sources, releases
from sandbox.web.feed import Feed, TooManyWaiters, events_for
from sandbox.web.jobargs import JobArgError, check_job
from sandbox.web.jobs import Job, Jobs, JobStateError
from sandbox.web.policy import allowed, buttons, may_dismiss, settle_buttons
from sandbox.web.roles import AccessError, User, deploy_patterns, may, own_env_name
from sandbox.web.rpcargs import Call, env_name_arg, str_arg, whole_arg
from sandbox.web.rpcproto import RPCError
from sandbox.web.triggers import submit_delivery
from sandbox.web.views import Views
from sandbox.web.webhooks import WebhookError, receive

MAX_HEADERS = 100
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MAX_WAIT = 25.0
MAX_LOG_LINES = 1000
# methods a live page renders from: their answer carries `feed`, the feed's last id read BEFORE the
# data, so that the page's event stream starts there and misses no change made while it loads
LIVE = frozenset({"envs", "env", "jobs", "deploys", "deploy", "audit"})


class RootSide:
    """The methods the HTTP side may call; `handle(method, cred, source, args)` is the one entry."""

    def __init__(self, state: StateDB, views: Views, hooks: Callable[[], Sequence[Hook]] = tuple) -> None:
        self.state = state
        self.auth = Auth(state)
        self.jobs = Jobs(state)
        self.views = views
        self.hooks = hooks
        self.feed = Feed(state)
        # method -> (needs a signed-in user, function)
        self.methods: dict[str, tuple[bool, Callable[[Call], Any]]] = {
            "login": (False, self.login),
            "logout": (False, self.logout),
            "whoami": (True, self.whoami),
            "envs": (True, self.envs),
            "env": (True, self.env),
            "images": (True, self.images),
            "logs": (True, self.logs),
            "image_diff": (True, self.image_diff),
            "jobs": (True, self.list_jobs),
            "submit": (True, self.submit),
            "cancel": (True, self.cancel),
            "dismiss": (True, self.dismiss),
            "hook": (False, self.hook),
            "events": (True, self.events),
            "deploys": (True, self.deploys),
            "deploy": (True, self.deploy),
            "audit": (True, self.audit),
        }

    def handle(self, method: object, cred: object, source: object, args: object) -> Any:
        if not isinstance(method, str) or method not in self.methods:
            raise RPCError(400, f"unknown method {str(method)[:40]!r}")
        if not isinstance(args, dict) or not isinstance(source, str) or len(source) > 64:
            raise RPCError(400, "malformed request")
        needs_user, fn = self.methods[method]
        user, session = self._authenticate(cred) if needs_user else (None, None)
        if method == "logout" and isinstance(cred, dict):
            session = cred.get("session") if isinstance(cred.get("session"), str) else None
        try:
            if method in LIVE:
                cursor = self.feed.last_id()
                return {**fn(Call(user, session, source, args)), "feed": cursor}
            return fn(Call(user, session, source, args))
        except (AuthError, RPCError, WebhookError):
            raise
        except (AccessError, JobArgError) as e:
            raise RPCError(400, e.message, e.hint) from e
        except NotFound as e:
            raise RPCError(404, e.message, e.hint, type(e).__name__) from e
        except JobStateError as e:
            raise RPCError(409, e.message, e.hint, type(e).__name__) from e

    def _authenticate(self, cred: object) -> tuple[User, str | None]:
        if not isinstance(cred, dict) or len(cred) != 1:
            raise RPCError(401, "sign in first", hint="a session cookie or an Authorization: Bearer token")
        (kind, value), *_ = cred.items()
        if not isinstance(value, str) or len(value) > 200:
            raise RPCError(401, "malformed credentials")
        try:
            if kind == "session":
                return self.auth.session_user(value), value
            if kind == "token":
                return self.auth.token_user(value), None
        except AuthError as e:
            raise RPCError(401, e.message, e.hint) from e
        raise RPCError(401, "malformed credentials")

    # -- sessions ---------------------------------------------------------------------------
    def login(self, c: Call) -> dict[str, Any]:
        name = str_arg(c.args, "user", 40)
        try:
            session, user = self.auth.login(name, str_arg(c.args, "password"), c.source)
        except RateLimited as e:
            raise RPCError(429, e.message, e.hint, "RateLimited") from e
        except AuthError as e:
            timeline.record(self.state, name, "login failed", f"failed login from {c.source}")
            raise RPCError(401, e.message, e.hint, "AuthError") from e
        timeline.record(self.state, user.name, "login", f"login from {c.source}")
        return {"session": session, "user": self._me(user)}

    def logout(self, c: Call) -> dict[str, Any]:
        if not c.session:
            return {"ended": False}
        try:
            who = self.auth.session_user(c.session).name
        except AuthError:
            who = None
        ended = self.auth.logout(c.session)
        if ended and who:
            timeline.record(self.state, who, "logout", f"logout from {c.source}")
        return {"ended": ended}

    def whoami(self, c: Call) -> dict[str, Any]:
        assert c.user is not None
        return self._me(c.user)

    def _me(self, user: User) -> dict[str, Any]:
        return {**user.to_dict(), "admin": may(user, "admin", "x")}

    # -- views ------------------------------------------------------------------------------
    def _may_view(self, user: User, env: str) -> bool:
        return may(user, "view", env_profile_name(env))

    def envs(self, c: Call) -> dict[str, Any]:
        assert c.user is not None
        every = self.views.envs()
        rows = [e for e in every if may(c.user, "view", e["profile"])]
        own = own_env_name(c.user)
        can_up = own not in {e["name"] for e in every} and allowed(c.user, "up", {"env": own}, None)
        return {
            "envs": rows,
            "buttons": {e["name"]: buttons(c.user, e["name"], e["owner"]) for e in rows},
            "own_env": own if can_up else None,  # a button to create it, if the user may
            "deploy_patterns": deploy_patterns(c.user),  # a form to up any env of these profiles
        }

    def env(self, c: Call) -> dict[str, Any]:
        assert c.user is not None
        name = env_name_arg(c.args)
        view = self.views.env(name)  # NotFound first: an unknown env is 404 for everyone
        if not may(c.user, "view", view["profile"]):
            raise RPCError(403, f"you may not view {name}", hint="ask an admin for a role on its profile")
        jobs = [j.to_dict() for j in self.jobs.recent(env=name, limit=20)]
        kinds = buttons(c.user, name, view["owner"])
        return {
            "env": view,
            "jobs": jobs,
            "cancel": self._cancellable(c.user, jobs),
            "settle": self._settle(c.user, jobs),
            "buttons": kinds,
            "promote": promote_sources(self.state, c.user, view, self.views.envs())
            if "promote" in kinds
            else [],
            "releases": releases(self.state, view, self._digests()) if "rollback" in kinds else [],
            "deploys": timeline.deploys(self.state, [name], 5),
        }

    def _digests(self) -> set[str]:
        return {str(i["digest"]) for i in self.views.images()}

    def images(self, c: Call) -> list[dict[str, Any]]:
        assert c.user is not None
        if not c.user.roles:
            raise RPCError(403, "you hold no role", hint="ask an admin for one")
        return self.views.images()

    def logs(self, c: Call) -> dict[str, Any]:
        """The app's last log lines in one instance of an env the caller may view."""
        assert c.user is not None
        name = env_name_arg(c.args)
        index = whole_arg(c.args, "instance", 0, 0, 999)
        lines = whole_arg(c.args, "lines", 200, 1, MAX_LOG_LINES)
        view = self.views.env(name)
        if not may(c.user, "view", view["profile"]):
            raise RPCError(403, f"you may not view {name}", hint="ask an admin for a role on its profile")
        if index >= len(view["instances"]):
            raise RPCError(404, f"{name} has no instance {index}", hint=f"it has {len(view['instances'])}")
        try:
            got = self.views.logs(name, index, lines)
        except NotFound:
            raise
        except SandboxError as e:
            raise RPCError(502, e.message, e.hint) from e
        return {"env": name, "instance": index, "lines": got}

    def image_diff(self, c: Call) -> dict[str, Any]:
        """`sandbox image diff A B --limit 2000 --json` of two full digests of the store."""
        assert c.user is not None
        if not c.user.roles:
            raise RPCError(403, "you hold no role", hint="ask an admin for one")
        a, b = (str_arg(c.args, k, 71) for k in ("a", "b"))
        for d in (a, b):
            if not DIGEST_RE.fullmatch(d):
                raise RPCError(400, f"{d[:71]!r} is not an image digest", hint="sha256: and 64 hex digits")
        return self.views.image_diff(a, b)  # NotFound (404) for a digest not in the store

    def _cancellable(self, user: User, jobs: list[dict[str, Any]]) -> list[int]:
        return [
            j["id"]
            for j in jobs
            if j["state"] == "queued" and may(user, "cancel_job", env_profile_name(j["env"]))
        ]

    def _settle(self, user: User, jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Job id (a string) -> the buttons of each unsettled interrupted job that `user` may press
        (resume, rollback, dismiss) and whether its env has a router (for the buttons' probe)."""
        out: dict[str, dict[str, Any]] = {}
        views: dict[str, dict[str, Any] | None] = {}
        for j in jobs:
            if j["state"] != "interrupted" or j["resolved"] is not None:
                continue
            if j["env"] not in views:
                try:
                    views[j["env"]] = self.views.env(j["env"])
                except NotFound:
                    views[j["env"]] = None
            view = views[j["env"]]
            owner = None if view is None else str(view["owner"])
            kinds = settle_buttons(user, j["kind"], j["args"], owner)
            if kinds:
                out[str(j["id"])] = {"buttons": kinds, "routed": bool(view and view.get("url"))}
        return out

    def list_jobs(self, c: Call) -> dict[str, Any]:
        assert c.user is not None
        limit = whole_arg(c.args, "limit", 100, 1, 1000)
        env = env_name_arg({"name": c.args["env"]}) if "env" in c.args else None
        rows = [j.to_dict() for j in self.jobs.recent(env=env, limit=limit) if self._may_view(c.user, j.env)]
        return {"jobs": rows, "cancel": self._cancellable(c.user, rows), "settle": self._settle(c.user, rows)}

    # -- the live feed (SSE) ----------------------------------------------------------------
    def events(self, c: Call) -> dict[str, Any]:
        """`feed.events_for` the caller, its arguments checked here."""
        assert c.user is not None
        after, wait = c.args.get("after"), c.args.get("wait", 0)
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
            raise RPCError(400, "after must be an event id")
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT:
            raise RPCError(400, f"wait must be 0 to {MAX_WAIT:g} seconds")
        try:
            return events_for(self.feed, c.user, after, float(wait))
        except TooManyWaiters as e:
            raise RPCError(503, "too many live streams are open", hint="try again later") from e

    # -- jobs -------------------------------------------------------------------------------
    def _owner(self, env: str) -> str | None:
        try:
            owner = self.views.env(env)["owner"]
        except NotFound:
            return None
        return str(owner)

    def submit(self, c: Call) -> dict[str, Any]:
        assert c.user is not None
        kind = c.args.get("kind")
        checked = check_job(kind, c.args.get("args"), c.user.name, "button")
        assert isinstance(kind, str)
        if not allowed(c.user, kind, checked, self._owner(checked["env"])):
            raise RPCError(403, f"you may not run {kind} on {checked['env']}", hint="ask an admin for a role")
        if kind in ("promote", "rollback") and "image" in checked and checked["image"] not in self._digests():
            raise RPCError(
                409,
                f"image {checked['image'][:19]} is gone from the store",
                hint="`sandbox images` lists what is kept; pick another release",
            )
        return self.jobs.submit(kind, checked, who=c.user.name, trigger="button").to_dict()

    def _viewable_job(self, user: User, job_id: object) -> Job:
        """Job `job_id` when `user` may view its env; one it may not view is as unknown (404)."""
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise RPCError(400, "id must be a job number")
        job: Job = self.jobs.get(job_id)
        if not self._may_view(user, job.env):
            raise NotFound(f"job #{job_id} not found", hint="the jobs page lists them")
        return job

    def cancel(self, c: Call) -> dict[str, Any]:
        assert c.user is not None
        job = self._viewable_job(c.user, c.args.get("id"))
        if not may(c.user, "cancel_job", env_profile_name(job.env)):
            raise RPCError(403, f"you may not cancel job #{job.id}", hint="a developer's role is needed")
        done = self.jobs.cancel(job.id).to_dict()
        timeline.record(self.state, c.user.name, "cancel", f"cancelled job #{job.id} ({job.kind})", job.env)
        return done

    def dismiss(self, c: Call) -> dict[str, Any]:
        """Settle an interrupted job by hand (its env's queue moves on): the permission the job
        needed, and a deployer's resume for a promotion; an audit row like a cancel."""
        assert c.user is not None
        job = self._viewable_job(c.user, c.args.get("id"))
        if not may_dismiss(c.user, job.kind, job.args, self._owner(job.env)):
            raise RPCError(403, f"you may not dismiss job #{job.id}", hint="a deployer's role is needed")
        done = self.jobs.dismiss(job.id).to_dict()
        what = f"dismissed interrupted job #{job.id} ({job.kind})"
        timeline.record(self.state, c.user.name, "dismiss", what, job.env)
        return done

    # -- deploy timeline, audit log ---------------------------------------------------------
    def _limit(self, c: Call, default: int = 50) -> int:
        return whole_arg(c.args, "limit", default, 1, 500)

    def deploys(self, c: Call) -> dict[str, Any]:
        assert c.user is not None
        names = [e["name"] for e in self.views.envs() if may(c.user, "view", e["profile"])]
        if "env" in c.args:
            name = env_name_arg({"name": c.args["env"]})
            names = [n for n in names if n == name]
        return {"deploys": timeline.deploys(self.state, names, self._limit(c))}

    def deploy(self, c: Call) -> dict[str, Any]:
        assert c.user is not None
        deploy_id = c.args.get("id")
        if isinstance(deploy_id, bool) or not isinstance(deploy_id, int) or not 0 < deploy_id < 2**62:
            raise RPCError(400, "id must be a deploy number")
        try:
            d = timeline.deploy(self.state, deploy_id)
        except SandboxError as e:
            raise RPCError(404, f"deploy #{deploy_id} not found") from e
        if not self._may_view(c.user, d["env"]):
            raise RPCError(404, f"deploy #{deploy_id} not found")
        return d

    def audit(self, c: Call) -> dict[str, Any]:
        assert c.user is not None
        if not may(c.user, "admin", "x"):
            raise RPCError(403, "the audit log is for admins", hint="ask an admin")
        return {"rows": timeline.audit(self.state, self._limit(c, 200))}

    # -- webhooks ---------------------------------------------------------------------------
    def hook(self, c: Call) -> dict[str, Any]:
        name = str_arg(c.args, "name", 40)
        headers = c.args.get("headers")
        if (
            not isinstance(headers, dict)
            or len(headers) > MAX_HEADERS
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise RPCError(400, "malformed headers")
        try:
            body = base64.b64decode(str_arg(c.args, "body", 3 * 1024 * 1024), validate=True)
        except ValueError as e:
            raise RPCError(400, "malformed body") from e
        try:
            delivery = receive(self.hooks(), name, headers, body, self.state)
        except WebhookError as e:
            raise RPCError(e.status, e.message, e.hint, "WebhookError") from e
        except SandboxError as e:  # e.g. the secret file: the sender learns nothing of it
            raise RPCError(500, "the hook is misconfigured on the server") from e
        job = submit_delivery(self.jobs, delivery, time.time())
        return {"delivery": delivery.id, "ignored": delivery.ignored, "job": job.id if job else None}
