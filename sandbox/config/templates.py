"""Render recipe templates with a sandboxed, strict Jinja2 environment."""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment


class TemplateProblem(Exception):
    """A template failed to load or render: `name` (relative to the search root), `line`, `reason`."""

    def __init__(self, name: str, line: int | None, reason: str) -> None:
        self.name = name
        self.line = line
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"template {self.name}" + (f" line {self.line}" if self.line else "")
        return f"{where}: {self.reason}"


class ContainedLoader(jinja2.BaseLoader):
    """Templates from one directory; `include`/`extends`/`import` can name no file whose real path
    (after every symlink) is outside it. FileSystemLoader refuses `..` but follows links."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Any]:
        from jinja2.loaders import split_template_path

        path = os.path.join(self.root, *split_template_path(template))
        real = os.path.realpath(path)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise SecurityError(f"template {template!r} is a link to outside the workspace")
        if not os.path.isfile(real):
            raise jinja2.TemplateNotFound(template)
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            text = f.read().decode("utf-8")
        mtime = os.path.getmtime(real)
        return text, real, lambda: os.path.getmtime(real) == mtime


def make_environment(search_root: Path) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=ContainedLoader(search_root),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _template_frame(exc: BaseException, root: str) -> tuple[str, int] | None:
    """The innermost traceback frame that is template code (jinja rewrites those to template lines)."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        filename = os.path.realpath(frame.filename) if frame.filename else ""
        if filename.startswith(root + os.sep) and not filename.endswith(".py") and frame.lineno:
            return os.path.relpath(filename, root).replace(os.sep, "/"), frame.lineno
    return None


def render_template(path: Path, context: Mapping[str, Any], search_root: Path) -> str:
    """Render `path` (a file under `search_root`); raise TemplateProblem on any failure."""
    root = os.path.realpath(search_root)
    real = os.path.realpath(path)
    name = os.path.relpath(real, root).replace(os.sep, "/")
    if name.startswith("../") or name == "..":
        raise TemplateProblem(path.name, None, "is outside the template search root")
    env = make_environment(Path(root))
    try:
        return env.get_template(name).render(dict(context))
    except jinja2.TemplateSyntaxError as exc:
        shown = exc.name or name
        raise TemplateProblem(shown, exc.lineno, f"syntax error: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise TemplateProblem(name, None, f"template not found: {exc.name}") from None
    except (jinja2.UndefinedError, SecurityError) as exc:
        frame = _template_frame(exc, root)
        shown, line = frame if frame else (name, None)
        kind = "unsafe operation: " if isinstance(exc, SecurityError) else ""
        raise TemplateProblem(shown, line, f"{kind}{exc.message or exc}") from None
    except UnicodeDecodeError:
        raise TemplateProblem(name, None, "is not valid UTF-8 text") from None
    except Exception as exc:  # a template can raise anything (1/0, bad filter args ...)
        frame = _template_frame(exc, root)
        shown, line = frame if frame else (name, None)
        raise TemplateProblem(shown, line, f"{type(exc).__name__}: {exc}") from None


def recipe_context(
    *,
    name: str,
    description: str,
    base: Mapping[str, Any],
    env: Mapping[str, str],
    variables: Mapping[str, Any],
    app: Mapping[str, Any] | None,
    users: list[Mapping[str, Any]],
) -> dict[str, Any]:
    """The variables a recipe template sees: recipe, env, vars, app, users and every var at top level."""
    context: dict[str, Any] = dict(variables)
    context.update(
        recipe={"name": name, "description": description, "base": dict(base)},
        env=dict(env),
        vars=dict(variables),
        app=dict(app) if app is not None else None,
        users=[dict(u) for u in users],
    )
    return context
