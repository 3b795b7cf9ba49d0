"""The images page (`/images`: recipes, tags, digests, sizes, and the envs that run each image) and
the diff of two images (`/images/diff?a=DIGEST&b=DIGEST`: packages and files added, removed and
changed, and the strategy a promotion from A to B would pick). The root side computes the diff
(`image_diff`, the view `sandbox image diff A B --limit 2000 --json` prints)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.web.httpapp import rpc, session_cred
from sandbox.web.httppages import error_page, me_of, page
from sandbox.web.rpcproto import RPCError


def _running(envs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """digest -> the names of the (viewable) envs that run it, on the env or on any instance."""
    out: dict[str, list[str]] = {}
    for e in envs:
        digests = {e.get("image"), *(i.get("image") for i in e.get("instances") or [])}
        for d in sorted(x for x in digests if isinstance(x, str)):
            out.setdefault(d, []).append(e["name"])
    return out


def _newest_first(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(images, key=lambda i: (-i["created"], i["recipe"], i["digest"]))


def _previous(images: list[dict[str, Any]]) -> dict[str, str]:
    """digest -> the newest image of the same recipe with an older `created` (for a "diff with the
    previous" link). `created` is the lock's date: rebuilds from one lock tie, and get no link."""
    out: dict[str, str] = {}
    for i in images:
        older = (j for j in images if j["recipe"] == i["recipe"] and j["created"] < i["created"])
        if (prev := next(older, None)) is not None:  # images are newest first
            out[i["digest"]] = prev["digest"]
    return out


async def images_page(request: Request) -> Response:
    me = None
    try:
        me = await me_of(request)
        images = _newest_first(await rpc(request, "images", session_cred(request), {}))
        envs = (await rpc(request, "envs", session_cred(request), {}))["envs"]
    except RPCError as e:
        return error_page(request, e, me)
    return page(
        request,
        "images.html",
        me=me,
        images=images,
        running=_running(envs),
        previous=_previous(images),
        a=images[1]["digest"] if len(images) > 1 else None,
        b=images[0]["digest"] if images else None,
    )


async def diff_page(request: Request) -> Response:
    me = None
    q = request.query_params
    try:
        me = await me_of(request)
        if len(q.getlist("a")) != 1 or len(q.getlist("b")) != 1:
            raise RPCError(400, "pick two images", hint="/images/diff?a=sha256:...&b=sha256:...")
        d = await rpc(request, "image_diff", session_cred(request), {"a": q["a"][:80], "b": q["b"][:80]})
        images = _newest_first(await rpc(request, "images", session_cred(request), {}))
    except RPCError as e:
        return error_page(request, e, me)
    by_digest = {i["digest"]: i for i in images}
    return page(
        request,
        "image_diff.html",
        me=me,
        d=d,
        images=images,
        ia=by_digest.get(d["a"]),
        ib=by_digest.get(d["b"]),
    )


def routes() -> list[BaseRoute]:
    return [Route("/images", images_page), Route("/images/diff", diff_page)]
