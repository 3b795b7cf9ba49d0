"""Sandboxed template rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.config.templates import TemplateProblem, recipe_context, render_template


def render(tmp_path: Path, text: str, **context: object) -> str:
    (tmp_path / "t").mkdir(exist_ok=True)
    path = tmp_path / "t" / "x.j2"
    path.write_text(text)
    return render_template(path, context, tmp_path)


def problem(tmp_path: Path, text: str, **context: object) -> TemplateProblem:
    with pytest.raises(TemplateProblem) as info:
        render(tmp_path, text, **context)
    return info.value


def test_renders_and_keeps_trailing_newline(tmp_path: Path) -> None:
    assert render(tmp_path, "port={{ port }}\n", port=80) == "port=80\n"


def test_undefined_is_an_error_with_line(tmp_path: Path) -> None:
    p = problem(tmp_path, "a\nb\n{{ nope }}\n")
    assert (p.name, p.line) == ("t/x.j2", 3)
    assert str(p) == "template t/x.j2 line 3: 'nope' is undefined"


def test_syntax_error_has_line(tmp_path: Path) -> None:
    p = problem(tmp_path, "ok\n{% if %}\n")
    assert p.line == 2 and "syntax error" in str(p) and "line 2" in str(p)


def test_sandbox_blocks_dunder_access(tmp_path: Path) -> None:
    p = problem(tmp_path, "{{ ''.__class__.__mro__ }}\n")
    assert "unsafe" in p.reason


def test_include_outside_root_refused(tmp_path: Path) -> None:
    assert "not found" in problem(tmp_path, '{% include "../../etc/passwd" %}').reason


def test_recipe_context_exposes_vars_top_level() -> None:
    ctx = recipe_context(
        name="web",
        description="d",
        base={"suite": "bookworm"},
        env={"A": "1"},
        variables={"greeting": "hi"},
        app=None,
        users=[{"name": "app"}],
    )
    assert ctx["greeting"] == "hi" and ctx["vars"] == {"greeting": "hi"}
    assert ctx["recipe"] == {"name": "web", "description": "d", "base": {"suite": "bookworm"}}
    assert ctx["app"] is None and ctx["users"] == [{"name": "app"}]
