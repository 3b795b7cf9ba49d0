"""The deploy timeline (`/deploys`, `/deploys/ID`, with the probe's SVG plot) and the audit log
(`/audit`, admins). They refresh live: static/live.js listens on `/events` and asks htmx to reload
the parts marked `data-live` when an event of their env (or any, for `*`) arrives."""

from __future__ import annotations

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.web.httpapp import rpc, session_cred, whole
from sandbox.web.httppages import error_page, me_of, page
from sandbox.web.rpcproto import RPCError
from sandbox.web.svgplot import plot


async def deploys_page(request: Request) -> Response:
    me = None
    try:
        me = await me_of(request)
        data = await rpc(request, "deploys", session_cred(request), {"limit": 100})
    except RPCError as e:
        return error_page(request, e, me)
    return page(request, "deploys.html", me=me, deploys=data["deploys"], feed=data["feed"])


async def deploy_page(request: Request) -> Response:
    me = None
    raw = request.path_params["id"]
    try:
        me = await me_of(request)
        deploy_id = whole(raw)
        if deploy_id is None:
            raise RPCError(400, "a deploy id is a number")
        d = await rpc(request, "deploy", session_cred(request), {"id": deploy_id})
    except RPCError as e:
        return error_page(request, e, me)
    svg = Markup(plot(d["series"], f"load probe of deploy #{d['id']}"))  # plot() escapes its text
    return page(request, "deploy.html", me=me, d=d, svg=svg, feed=d["feed"])


async def audit_page(request: Request) -> Response:
    me = None
    try:
        me = await me_of(request)
        data = await rpc(request, "audit", session_cred(request), {"limit": 300})
    except RPCError as e:
        return error_page(request, e, me)
    return page(request, "audit.html", me=me, rows=data["rows"], feed=data["feed"])


def routes() -> list[BaseRoute]:
    return [
        Route("/deploys", deploys_page),
        Route("/deploys/{id}", deploy_page),
        Route("/audit", audit_page),
    ]
