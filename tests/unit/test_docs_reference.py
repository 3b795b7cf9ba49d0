"""The generated reference pages (docs/reference/*.md) match the code: regenerated in memory from the
schemas and the click commands, they must equal the committed files, so a new key, option or command
without a regenerated page fails here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import yaml

REPO = Path(__file__).resolve().parents[2]
REGENERATE = "python scripts/gendocs.py"


def gendocs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gendocs", REPO / "scripts" / "gendocs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gendocs"] = module
    spec.loader.exec_module(module)
    return module


def test_reference_pages_are_current() -> None:
    pages = gendocs().generate()
    assert sorted(pages) == ["cli.md", "profile.md", "recipe.md", "settings.md"]
    stale = [
        name
        for name, text in pages.items()
        if not (REPO / "docs" / "reference" / name).is_file()
        or (REPO / "docs" / "reference" / name).read_text() != text
    ]
    assert stale == [], f"docs/reference/{', '.join(stale)} out of date: run `{REGENERATE}` and commit them"


def test_pages_hold_every_key_and_command() -> None:
    """Spot checks that the walk reaches nested models and lazily loaded commands."""
    from sandbox.config.profile import Health
    from sandbox.config.recipe import App, CronJob

    pages = gendocs().generate()
    for model in (App, CronJob):
        assert all(f"| `{k}` |" in pages["recipe.md"] for k in model.model_fields)
    assert all(f"| `{k}` |" in pages["profile.md"] for k in Health.model_fields)
    assert "## hosts[]" in pages["profile.md"] and "| `labels` |" in pages["profile.md"]
    assert "| `port_range` |" in pages["settings.md"] and "## hooks[]" in pages["settings.md"]
    for command in ("sandbox up", "sandbox promote", "sandbox rollback", "sandbox image inspect"):
        assert f"\n## {command}\n" in pages["cli.md"] or f"\n### {command}\n" in pages["cli.md"], command
    assert "`--to ENV`" in pages["cli.md"] and "`-n, --limit INTEGER` | `20`" in pages["cli.md"]


def test_site_nav_lists_every_page() -> None:
    """mkdocs.yml's nav names every Markdown page of docs/ (strict mode warns on an omitted one; this
    says which) and nothing that is not there."""

    class Loader(yaml.SafeLoader):
        pass

    # the toc slugify tag names a Python function: not needed to read the nav
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=Loader)  # a SafeLoader

    def walk(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for item in nav for p in walk(item)]
        if isinstance(nav, dict):
            return [p for v in nav.values() for p in walk(v)]
        return []

    listed = walk(config["nav"])
    pages = sorted(str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md"))
    assert sorted(listed) == pages
