"""Turn pydantic errors into located ConfigIssues, and the cross-reference checks of a recipe."""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from sandbox.config.sshkeys import looks_private
from sandbox.config.yamlmarks import locate
from sandbox.errors import ConfigIssue, Location

Loc = Sequence[str | int]
CRON_PACKAGES = ("cron", "cronie", "systemd-cron")
SYSTEMD_PACKAGES = ("systemd", "systemd-sysv")


def clean_loc(loc: Loc) -> tuple[str | int, ...]:
    """Drop pydantic's markers (like '[key]') from an error location."""
    return tuple(seg for seg in loc if seg != "[key]")


def format_path(loc: Loc) -> str:
    """('users', 0, 'sudo', 1) -> 'users[0].sudo[1]'."""
    out = ""
    for seg in loc:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else str(seg)
    return out


def did_you_mean(word: str, choices: Sequence[str]) -> str | None:
    """A hint naming the closest choice, or None."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _unwrap(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        return _unwrap(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else tp
    return tp


def model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class that validates the mapping found at `loc` (e.g. ('users', 0) -> User)."""
    current: Any = model
    for seg in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(seg, str) or seg not in current.model_fields:
                return None
            current = current.model_fields[seg].annotation
        elif get_origin(current) in (list, tuple) and isinstance(seg, int):
            current = get_args(current)[0]  # list[X] or tuple[X, ...]
        elif get_origin(current) is dict and isinstance(seg, str):
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def describe(value: Any, *, show: bool = True) -> str:
    """A short description of a YAML value for messages: 'a list', 'null', or its repr when short."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    text = repr(value)
    if show and len(text) <= 40:
        return text
    return "a number" if isinstance(value, int | float) else "a string"


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def error_issue(err: ErrorDetails, raw: Any, model: type[BaseModel] | None = None) -> ConfigIssue:
    """One pydantic error as a ConfigIssue located in the marked `raw` data (model: Recipe by default)."""
    if model is None:
        from sandbox.config.recipe import Recipe

        model = Recipe
    kind = err["type"]
    ctx = err.get("ctx") or {}
    below = ctx.get("at") if kind == "sandbox" else None  # fields.fail(..., at=KEY PATH)
    loc = clean_loc(err["loc"]) + (tuple(below) if isinstance(below, tuple | list) else ())
    hint: str | None = ctx.get("hint") if isinstance(ctx.get("hint"), str) else None
    show = not (loc and loc[0] == "keys")  # never echo anything that may be key material
    if kind == "extra_forbidden" and loc:
        key = loc[-1]
        message = f"unknown key '{key}'"
        parent = model_at(model, loc[:-1])
        if parent is not None and isinstance(key, str):
            hint = did_you_mean(key, list(parent.model_fields))
    elif kind == "missing" and loc:
        message = f"missing required key '{loc[-1]}'"
    elif kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, got {describe(err.get('input'), show=show)}"
    elif kind == "literal_error":
        message = f"expected one of {ctx.get('expected')}, got {describe(err.get('input'), show=show)}"
    elif kind == "sandbox":
        message = str(ctx.get("reason", err["msg"]))
    else:
        message = err["msg"].removeprefix("Value error, ")
    return ConfigIssue(locate(raw, loc), format_path(loc), message, hint)


def validation_issues(
    exc: ValidationError, raw: Any, model: type[BaseModel] | None = None
) -> list[ConfigIssue]:
    return [error_issue(err, raw, model) for err in exc.errors()]


# --- cross-reference checks on the merged (marked) data ---------------------------------------------


def _names(seq: Any, key: str = "name") -> list[tuple[int, str]]:
    if not isinstance(seq, list):
        return []
    return [(i, e[key]) for i, e in enumerate(seq) if isinstance(e, dict) and isinstance(e.get(key), str)]


def semantic_issues(raw: dict[str, Any]) -> list[ConfigIssue]:
    """Checks that relate several parts of a recipe (users, packages, app, keys, cron, services)."""
    issues: list[ConfigIssue] = []

    def add(loc: tuple[str | int, ...], message: str, hint: str | None = None) -> None:
        issues.append(ConfigIssue(locate(raw, loc), format_path(loc), message, hint))

    users = raw.get("users")
    declared = {name for _, name in _names(users)}
    packages_raw = raw.get("packages", [])
    packages = {p for p in packages_raw if isinstance(p, str)} if isinstance(packages_raw, list) else None

    uids: dict[int, int] = {}
    for i, user in enumerate(users if isinstance(users, list) else []):
        if not isinstance(user, dict):
            continue
        uid = user.get("uid")
        if isinstance(uid, int) and not isinstance(uid, bool):
            if uid in uids:
                add(("users", i, "uid"), f"uid {uid} is also used by users[{uids[uid]}]")
            uids.setdefault(uid, i)
        if user.get("sudo") and packages is not None and "sudo" not in packages:
            add(("users", i, "sudo"), "sudo entries need the package 'sudo'", "add sudo to packages")

    app = raw.get("app")
    if isinstance(app, dict):
        app_user = app.get("user", "app")
        if app_user == "root":
            add(("app", "user"), "the app must not run as root", "declare a user and use it")
        elif isinstance(app_user, str) and app_user not in declared:
            add(
                ("app", "user"),
                f"app user '{app_user}' is not declared in users",
                f"add '- name: {app_user}' under users",
            )

    keys = raw.get("keys")
    if isinstance(keys, dict):
        for user in keys:
            if user != "root" and isinstance(user, str) and user not in declared:
                add(
                    ("keys", user),
                    f"keys given for user '{user}' who is not declared in users",
                    did_you_mean(user, sorted(declared)),
                )

    needs = (("cron", CRON_PACKAGES, "cron jobs"), ("services", SYSTEMD_PACKAGES, "services"))
    for field, needed, what in needs:
        value = raw.get(field)
        if isinstance(value, list) and value and packages is not None and not packages & set(needed):
            add(
                (field,),
                f"{what} need one of the packages {', '.join(needed)}",
                f"add {needed[0]} to packages",
            )

    for field, key in (("users", "name"), ("cron", "name"), ("files", "dest")):
        seen: dict[str, int] = {}
        for i, name in _names(raw.get(field), key):
            if name in seen:
                add((field, i, key), f"duplicate {key} '{name}' (also {field}[{seen[name]}])")
            seen.setdefault(name, i)
    return issues


def final_issues(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Sorted by file and line, with any issue that would echo private key material redacted."""
    redacted = [
        ConfigIssue(i.location, "", "a PRIVATE key was found here; recipes must only name .pub files")
        if looks_private(str(i))
        else i
        for i in issues
    ]
    return sort_issues(redacted)


def sort_issues(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    def key(issue: ConfigIssue) -> tuple[str, int, int]:
        loc: Location = issue.location
        return loc.file, loc.line or 0, loc.column or 0

    return sorted(issues, key=key)
