"""Schemathesis over the hand-written OpenAPI document (httpapi.OPENAPI): every operation, with
generated paths, queries and bodies, against the real app and root side of webworld.py, as an admin
and as a viewer. No 500, and every answer's status, content type and body as the document says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from sandbox.web.httpapi import OPENAPI
from tests.unit.webworld import World

schema = schemathesis.openapi.from_dict(OPENAPI)


def _pipeline_into_itself(body: Any) -> bool:
    """The one rule JSON Schema cannot say (the document says it in words): a pipeline does not
    promote into the env it deploys to."""
    args = body.get("args") if isinstance(body, dict) and body.get("kind") == "pipeline" else None
    return isinstance(args, dict) and "promote" in args and args.get("promote") == args.get("env")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("schema"))
    try:
        yield w
    finally:
        w.close()


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case: Any, web: World) -> None:
    case.operation.schema.app = web.app  # the ASGI transport: in process, no socket
    for who in ("admin", "viewer"):
        if _pipeline_into_itself(case.body):
            assert case.call(headers=web.api(who), app=web.app).status_code == 400
            continue
        case.call_and_validate(headers=web.api(who), app=web.app)
