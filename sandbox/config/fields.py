"""Field types shared by the recipe, profile and settings schemas (cheap to import)."""

from __future__ import annotations

import re
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, BeforeValidator, Strict
from pydantic_core import PydanticCustomError


def fail(message: str, hint: str | None = None, *, at: tuple[str | int, ...] = ()) -> NoReturn:
    """Raise a validation error whose message (and optional hint) reach the ConfigIssue as is.

    `at` is the key path below the failing model that the error is about: a model validator's own
    error has the model's location only, so a cross-key rule names the key to point the user at.
    """
    ctx: dict[str, Any] = {"reason": message}
    if hint:
        ctx["hint"] = hint
    if at:
        ctx["at"] = at
    raise PydanticCustomError("sandbox", "{reason}", ctx)


def _check(regex: str, what: str, hint: str | None = None) -> AfterValidator:
    rx = re.compile(regex)

    def check(value: str) -> str:
        if not rx.fullmatch(value):
            fail(f"{value!r} is not a valid {what}", hint or f"must match {regex}")
        return value

    return AfterValidator(check)


def _absolute(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not value.startswith("/"):
            fail(f"{what} {value!r} must be an absolute path")
        if ".." in value.split("/") or any(c in value for c in "\0\n"):
            fail(f"{what} {value!r} must not contain '..' or control characters")
        return value

    return AfterValidator(check)


def _scalar_to_str(value: Any) -> Any:
    """YAML gives ints/floats/bools for unquoted values; accept them as their text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _no_newline(value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        fail("must be a single line")
    return value


RecipeName = Annotated[str, _check(r"[a-z0-9][a-z0-9-]{0,62}", "recipe name", "lowercase, digits, '-'")]
PackageName = Annotated[str, _check(r"[a-z0-9][a-z0-9+.-]+", "Debian package name")]
UserName = Annotated[str, _check(r"[a-z_][a-z0-9_-]{0,31}", "user/group name")]
EnvKey = Annotated[str, _check(r"[A-Za-z_][A-Za-z0-9_]*", "variable name")]
EnvValue = Annotated[str, BeforeValidator(_scalar_to_str), AfterValidator(_no_newline)]
Line = Annotated[str, AfterValidator(_no_newline)]
AbsPath = Annotated[str, _absolute("path")]
AbsGlob = Annotated[str, _absolute("glob pattern")]
StrictInt = Annotated[int, Strict()]
