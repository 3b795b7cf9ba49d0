"""The server-rendered pages: login, envs, one env, jobs. Forms post with a CSRF token; a page shows
only the buttons the root side says the user may press (`buttons` in its answers)."""

from __future__ import annotations

import contextlib
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.web.httpapp import (
    CSRF_COOKIE,
    HTMX,
    MAX_FORM,
    SESSION_COOKIE,
    BodyTooLarge,
    csrf_ok,
    csrf_token,
    read_body,
    rpc,
    session_cred,
    whole,
    with_csrf_cookie,
)
from sandbox.web.rpcproto import RPCError

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _left(t: float | None) -> str:
    if t is None:
        return "-"
    s = int(t - time.time())
    if s <= 0:
        return "expired"
    return next(f"{s // n}{u}" for u, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)) if s >= n)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


_env.filters["when"] = _when
_env.filters["size"] = _size
_env.filters["left"] = _left

# the load probe (requests per second) of a resume or rollback button, on an env with a router: the
# deploy page then plots what clients saw. Low enough for a small env; the API takes 1 to 200.
BUTTON_PROBE = 20


def page(request: Request, template: str, status: int = 200, **ctx: Any) -> Response:
    """`feed` (the root side's feed cursor when the data was read) lets static/live.js start its
    event stream there: nothing that changes while the page loads is missed."""
    ctx.setdefault("settle", {})
    ctx.setdefault("feed", None)
    html = _env.get_template(template).render(
        csrf=csrf_token(request), htmx=HTMX, probe_rps=BUTTON_PROBE, **ctx
    )
    return with_csrf_cookie(request, HTMLResponse(html, status))


def error_page(request: Request, e: RPCError, me: dict[str, Any] | None = None) -> Response:
    if e.status == 401:
        return RedirectResponse("/login", 303)
    headers = {}
    if e.status == 429:
        headers["Retry-After"] = "60"
    resp = page(request, "error.html", e.status, me=me, message=e.message, hint=e.hint)
    resp.headers.update(headers)
    return resp


async def read_form(request: Request) -> dict[str, str] | Response:
    """The urlencoded form (each field once), or the error page: too large, malformed, no CSRF."""
    try:
        raw = await read_body(request, MAX_FORM)
        pairs = urllib.parse.parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except BodyTooLarge:
        return error_page(request, RPCError(413, f"the form is over {MAX_FORM} bytes"))
    except (UnicodeDecodeError, ValueError):
        return error_page(request, RPCError(400, "a malformed form"))
    form: dict[str, str] = {}
    for k, v in pairs:
        if k in form:
            return error_page(request, RPCError(400, f"the field {k[:40]!r} is given twice"))
        form[k] = v
    if not csrf_ok(request, form):
        return error_page(
            request, RPCError(403, "the form's CSRF token is missing or wrong", hint="reload the page")
        )
    return form


async def me_of(request: Request) -> dict[str, Any]:
    result: dict[str, Any] = await rpc(request, "whoami", session_cred(request), {})
    return result


async def index(request: Request) -> Response:
    return RedirectResponse("/envs", 303)


async def login_form(request: Request) -> Response:
    return page(request, "login.html", me=None, message=None)


async def login(request: Request) -> Response:
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    try:
        result = await rpc(
            request, "login", {}, {"user": form.get("user", ""), "password": form.get("password", "")}
        )
    except RPCError as e:
        status = e.status if e.status in (400, 401, 429) else 503
        resp = page(request, "login.html", status, me=None, message=e.message)
        if status == 429:
            resp.headers["Retry-After"] = "60"
        return resp
    resp = RedirectResponse("/envs", 303)
    resp.set_cookie(
        SESSION_COOKIE,
        result["session"],
        httponly=True,
        samesite="strict",
        secure=request.app.state.web.secure_cookies,
        path="/",
    )
    return resp


async def logout(request: Request) -> Response:
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    cred = session_cred(request)
    if cred:
        with contextlib.suppress(RPCError):
            await rpc(request, "logout", cred, {})
    resp = RedirectResponse("/login", 303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    resp.delete_cookie(CSRF_COOKIE, path="/")
    return resp


async def envs_page(request: Request) -> Response:
    try:
        me = await me_of(request)
        data = await rpc(request, "envs", session_cred(request), {})
        # the images the user's own throwaway env may start from (any of the store)
        wanted = data["own_env"] or data["deploy_patterns"]
        images = await rpc(request, "images", session_cred(request), {}) if wanted else []
    except RPCError as e:
        return error_page(request, e)
    return page(
        request,
        "envs.html",
        me=me,
        envs=data["envs"],
        buttons=data["buttons"],
        own_env=data["own_env"],
        deploy_patterns=data["deploy_patterns"],
        images=images,
        feed=data["feed"],
    )


async def env_page(request: Request) -> Response:
    got = await _env_data(request)
    if isinstance(got, Response):
        return got
    me, data = got
    return page(
        request,
        "env.html",
        me=me,
        env=data["env"],
        instance=int_query(request, "instance", 0) or 0,
        jobs=data["jobs"],
        cancel=data["cancel"],
        settle=data["settle"],
        buttons=data["buttons"],
        sources=data["promote"],
        releases=data["releases"],
        deploys=data["deploys"],
        feed=data["feed"],
    )


def int_query(request: Request, key: str, default: int) -> int | None:
    """A whole-number query parameter (default when absent); None when it is not one."""
    raw = request.query_params.get(key)
    if raw is None:
        return default
    return whole(raw, 6)


async def logs_fragment(request: Request) -> Response:
    """The app's last log lines of one instance, as an HTML fragment the env page reloads."""
    index, lines = int_query(request, "instance", 0), int_query(request, "lines", 200)
    if index is None or lines is None:
        return error_page(request, RPCError(400, "instance and lines are whole numbers"))
    args = {"name": request.path_params["name"][:60], "instance": index, "lines": lines}
    try:
        data = await rpc(request, "logs", session_cred(request), args)
    except RPCError as e:
        if e.status == 401:
            return error_page(request, e)
        return HTMLResponse(_env.get_template("_logs.html").render(error=e), e.status)
    return HTMLResponse(_env.get_template("_logs.html").render(logs=data, error=None))


async def _env_data(request: Request) -> tuple[dict[str, Any], dict[str, Any]] | Response:
    me = None
    try:
        me = await me_of(request)
        data = await rpc(request, "env", session_cred(request), {"name": request.path_params["name"][:60]})
    except RPCError as e:
        return error_page(request, e, me)
    return me, data


async def promote_page(request: Request) -> Response:
    """The confirm step of a promotion: the exact digest the job will carry, and its source."""
    got = await _env_data(request)
    if isinstance(got, Response):
        return got
    me, data = got
    name, source = data["env"]["name"], request.query_params.get("source", "")[:60]
    if "promote" not in data["buttons"]:
        return error_page(request, RPCError(403, f"you may not promote into {name}"), me)
    s = next((s for s in data["promote"] if s["source"] == source), None)
    if s is None:
        return error_page(request, RPCError(404, f"{source!r} is not an env {name} can be promoted from"), me)
    if s["reason"]:
        return error_page(request, RPCError(409, f"cannot promote {source} into {name}: {s['reason']}"), me)
    return page(request, "promote.html", me=me, env=data["env"], s=s)


async def maintenance_page(request: Request) -> Response:
    """The maintenance form: the allowlist (the root side checks every address again)."""
    got = await _env_data(request)
    if isinstance(got, Response):
        return got
    me, data = got
    if "maintenance" not in data["buttons"]:
        return error_page(
            request, RPCError(403, f"you may not switch maintenance on {data['env']['name']}"), me
        )
    return page(request, "maintenance.html", me=me, env=data["env"])


async def jobs_page(request: Request) -> Response:
    try:
        me = await me_of(request)
        data = await rpc(request, "jobs", session_cred(request), {"limit": 200})
    except RPCError as e:
        return error_page(request, e)
    return page(
        request,
        "jobs.html",
        me=me,
        jobs=data["jobs"],
        cancel=data["cancel"],
        settle=data["settle"],
        feed=data["feed"],
    )


MAX_HOURS = 720


def _job_args(kind: str, form: dict[str, str]) -> dict[str, Any]:
    """A form's fields as job arguments: 'true'/'false' are booleans, digits whole numbers; `allow`
    (a text field) a list of the words in it; `hours` (the extend form) becomes `ttl` in seconds.
    The root side checks every value again (jobargs.check_job)."""
    args: dict[str, Any] = {}
    for k, v in form.items():
        if k in ("csrf", "kind", "back"):
            continue
        if k == "image" and not v:
            continue  # "the profile's own": no image argument
        if k == "allow":
            args[k] = v.replace(",", " ").split()
        elif k == "hours":
            hours = whole(v.strip(), 3)
            if hours is None or not 1 <= hours <= MAX_HOURS:
                raise RPCError(400, f"hours must be a whole number from 1 to {MAX_HOURS}, not {v[:20]!r}")
            args["ttl"] = hours * 3600
        else:
            n = whole(v, 9)
            args[k] = {"true": True, "false": False}.get(v, v if n is None else n)
    return args


async def submit(request: Request) -> Response:
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    kind = form.get("kind", "")
    try:
        args = _job_args(kind, form)
        job = await rpc(request, "submit", session_cred(request), {"kind": kind, "args": args})
    except RPCError as e:
        return error_page(request, e)
    if kind == "up":  # the env may not exist yet: its page would be a 404 until the job ran
        return RedirectResponse("/jobs", 303)
    return RedirectResponse(f"/envs/{urllib.parse.quote(job['env'])}", 303)


async def _job_action(request: Request, method: str) -> Response:
    """POST /jobs/ID/cancel or /jobs/ID/dismiss (a form with its CSRF token), then the jobs page."""
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    raw = request.path_params["id"]
    job_id = whole(raw)
    if job_id is None:
        return error_page(request, RPCError(400, "a job id is a number"))
    try:
        await rpc(request, method, session_cred(request), {"id": job_id})
    except RPCError as e:
        return error_page(request, e)
    return RedirectResponse("/jobs", 303)


async def cancel(request: Request) -> Response:
    return await _job_action(request, "cancel")


async def dismiss(request: Request) -> Response:
    return await _job_action(request, "dismiss")


def routes() -> list[BaseRoute]:
    return [
        Route("/", index),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/envs", envs_page),
        Route("/envs/{name}", env_page),
        Route("/envs/{name}/logs", logs_fragment),
        Route("/envs/{name}/promote", promote_page, methods=["GET"]),
        Route("/envs/{name}/maintenance", maintenance_page, methods=["GET"]),
        Route("/jobs", jobs_page, methods=["GET"]),
        Route("/jobs", submit, methods=["POST"]),
        Route("/jobs/{id}/cancel", cancel, methods=["POST"]),
        Route("/jobs/{id}/dismiss", dismiss, methods=["POST"]),
    ]
