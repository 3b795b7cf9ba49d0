"""The HTTP side: a Starlette app that holds no state. Every request becomes one call to the root
side's socket (rpcproto), carrying the client's session cookie or bearer token; the root side
authenticates and authorizes it. This module never imports the state DB, auth or a backend (an
import-linter contract in pyproject.toml checks it), and it runs as the unprivileged `sandbox-web`.

- Sessions: the cookie `sbx_session`, HttpOnly, SameSite=Strict, Secure when served over TLS.
- CSRF: double submit. A random `sbx_csrf` cookie (SameSite=Strict) and the same value in a hidden
  field of every form; a form POST without both, or with two that differ, is refused (403).
- The JSON API (/api/v1) takes only `Authorization: Bearer sbx_...`; a cookie is not enough there,
  so the API needs no CSRF token.
- Bodies are read with a limit (413 over it); JSON must be well-formed, without duplicate keys (400).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anyio import to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.web import rpcproto
from sandbox.web.rpcproto import RPCError

SESSION_COOKIE, CSRF_COOKIE = "sbx_session", "sbx_csrf"
MAX_FORM = 16 * 1024
MAX_JSON = 64 * 1024
MAX_HOOK = 2 * 1024 * 1024
STATIC = Path(__file__).parent / "static"
HTMX = "htmx-2.0.4.min.js"  # htmx.org 2.0.4 from npm, sha256 e209dda5...fb447 (0BSD)

Caller = Callable[[str, dict[str, str], dict[str, Any], str], Any]


@dataclass
class WebConfig:
    """How the HTTP side reaches the root side, and how it sets its cookies."""

    socket: str = ""
    secure_cookies: bool = False
    caller: Caller | None = None  # tests: another way to reach the root side
    extra: dict[str, Any] = field(default_factory=dict)

    def call(self, method: str, cred: dict[str, str], args: dict[str, Any], source: str) -> Any:
        if self.caller is not None:
            return self.caller(method, cred, args, source)
        return rpcproto.call(self.socket, method, cred, args, source)


class BodyTooLarge(Exception):
    pass


def whole(raw: str, digits: int = 18) -> int | None:
    """`raw` as a whole number of 1 to `digits` ASCII digits, else None (str.isdigit() is true for
    "²", which int() refuses, and int() takes other scripts' digits)."""
    return int(raw) if re.fullmatch(f"[0-9]{{1,{digits}}}", raw) else None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or BodyTooLarge as soon as it (or its Content-Length) is over `limit`."""
    length = request.headers.get("content-length")
    if length is not None and ((n := whole(length)) is None or n > limit):
        raise BodyTooLarge()
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise BodyTooLarge()
    return bytes(data)


def source(request: Request) -> str:
    """The client's address as the socket saw it (a proxy's own header is not trusted)."""
    host = request.client.host if request.client else ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:  # a unix socket or a test client: one shared bucket for the rate limit
        return "0.0.0.0"


async def rpc(request: Request, method: str, cred: dict[str, str], args: dict[str, Any]) -> Any:
    cfg: WebConfig = request.app.state.web
    return await to_thread.run_sync(cfg.call, method, cred, args, source(request))


def session_cred(request: Request) -> dict[str, str]:
    value = request.cookies.get(SESSION_COOKIE)
    return {"session": value} if value else {}


def bearer_cred(request: Request) -> dict[str, str]:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return {"token": value.strip()} if scheme.lower() == "bearer" and value.strip() else {}


def csrf_token(request: Request) -> str:
    """This browser's CSRF token (made on the first page it gets; set by `with_csrf_cookie`)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) != 43:
        token = request.state.__dict__.setdefault("new_csrf", secrets.token_urlsafe(32))
    return token


def csrf_ok(request: Request, form: dict[str, str]) -> bool:
    cookie, sent = request.cookies.get(CSRF_COOKIE, ""), form.get("csrf", "")
    return len(cookie) == 43 and hmac.compare_digest(cookie.encode(), sent.encode())


def with_csrf_cookie(request: Request, response: Response) -> Response:
    new = request.state.__dict__.get("new_csrf")
    if new:
        secure = request.app.state.web.secure_cookies
        response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict", secure=secure, path="/")
    return response


def api_error(status: int, message: str, hint: str | None = None, kind: str = "Error") -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": kind, "message": message, "hint": hint}, status, headers=headers)


def rpc_error(e: RPCError) -> JSONResponse:
    return api_error(e.status, e.message, e.hint, e.kind)


class SecurityHeaders:
    """Headers every answer carries: no framing, no inline script, no referrer, no sniffing."""

    HEADERS = [
        (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"cache-control", b"no-store"),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.HEADERS
            await send(message)

        await self.app(scope, receive, send_with)


def make_app(cfg: WebConfig) -> Starlette:
    from sandbox.web import httpapi, httpevents, httpimages, httppages, httptimeline

    routes = [
        *httpapi.routes(),
        *httpevents.routes(),
        *httptimeline.routes(),
        *httpimages.routes(),
        *httppages.routes(),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]

    async def server_error(request: Request, exc: Exception) -> Response:
        return api_error(500, "internal error", kind="InternalError")

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {500: server_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.web = cfg
    app.add_middleware(SecurityHeaders)
    return app
