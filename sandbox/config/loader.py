"""load_recipe: read a recipe and its `extends` chain, merge, validate, resolve files, keys, templates."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox.config.fields import EnvKey, EnvValue
from sandbox.config.merging import concat_merge as _concat
from sandbox.config.merging import deep_merge as _deep
from sandbox.config.merging import display_path
from sandbox.config.recipe import App, Base, FileEntry, Recipe, User
from sandbox.config.sshkeys import looks_private, parse_key_file
from sandbox.config.templates import TemplateProblem, recipe_context, render_template
from sandbox.config.validate import error_issue, final_issues, format_path, semantic_issues
from sandbox.config.yamlmarks import MarkedDict, MarkedList, locate, read_yaml, to_plain
from sandbox.errors import ConfigError, ConfigIssue, IssueCollector, Location

Loc = tuple[str | int, ...]
DEEP_MERGED = ("base", "app", "env", "vars")
REPLACED_BY = {"users": "name", "cron": "name", "files": "dest"}
CONCATENATED = ("packages", "services", "run")
# Fields a file may leave out because a parent (or the merge) provides them.
PARTIAL_OK = ("app", "base")


@dataclass(frozen=True)
class ResolvedFile:
    """files[index] ready for the builder: either `src` (a real path, maybe a dir) or rendered `content`."""

    index: int
    dest: str
    mode: int | None
    owner: str
    group: str | None
    src: Path | None = None
    is_dir: bool = False
    content: bytes | None = None


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe, with where each value came from and its resolved inputs."""

    recipe: Recipe
    path: Path
    sources: list[Path]
    raw: MarkedDict
    resolved_files: list[ResolvedFile] = field(default_factory=list)
    keys: dict[str, list[str]] = field(default_factory=dict)

    def where(self, loc: Loc) -> Location:
        """The file:line of a key path, e.g. where(("packages", 3)), even when inherited."""
        return locate(self.raw, loc)

    def inputs_digest(self) -> str:
        """sha256 of the canonical JSON of the merged recipe."""
        data = json.dumps(self.recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(data.encode()).hexdigest()


class _TemplateInputs(BaseModel):
    """The parts of a recipe templates see; validated alone so templates render despite other errors."""

    model_config = ConfigDict(extra="ignore")
    name: str = ""
    description: str = ""
    base: Base = Field(default_factory=Base)
    env: dict[EnvKey, EnvValue] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    app: App | None = None
    users: list[User] = Field(default_factory=list)


# --- merging --------------------------------------------------------------------------------------


def _merge_field(key: Any, parent: Any, child: Any) -> Any:
    if key in DEEP_MERGED:
        return _deep(parent, child)
    if key in REPLACED_BY:
        return _concat(parent, child, REPLACED_BY[key])
    if key in CONCATENATED:
        return _concat(parent, child)
    if key == "keys" and isinstance(parent, MarkedDict) and isinstance(child, MarkedDict):
        out = MarkedDict(child.location)
        for user in [*parent, *(u for u in child if u not in parent)]:
            src = child if user in child else parent
            value = _concat(parent[user], child[user]) if user in parent and user in child else src[user]
            out.put(user, value, src.marks[user])
        return out
    return child


def merge(parent: MarkedDict, child: MarkedDict) -> MarkedDict:
    """Child over parent (see the recipe docs); marks keep pointing to the defining file."""
    out = MarkedDict(child.location)
    for key, value in parent.items():
        if key == "name" and key not in child:
            continue
        if key in child:
            out.put(key, _merge_field(key, value, child[key]), child.marks[key])
        else:
            out.put(key, value, parent.marks[key])
    for key, value in child.items():
        if key not in out:
            out.put(key, value, child.marks[key])
    return out


def _dedup_packages(raw: MarkedDict) -> None:
    packages = raw.get("packages")
    if not isinstance(packages, MarkedList):
        return
    out, seen = MarkedList(packages.location), set()
    for value, mark in zip(packages, packages.marks, strict=True):
        if isinstance(value, Hashable):
            if value in seen:
                continue
            seen.add(value)
        out.put(value, mark)
    raw["packages"] = out


def _partial_missing(err: Any) -> bool:
    """A missing key a single file of an extends chain may leave to another file."""
    loc = err["loc"]
    return bool(err["type"] == "missing" and (len(loc) == 1 or (len(loc) == 2 and loc[0] in PARTIAL_OK)))


def _common(index: int, entry: FileEntry) -> tuple[int, str, int | None, str, str | None]:
    mode = int(entry.mode, 8) if entry.mode else None
    return index, entry.dest, mode, entry.owner, entry.group


def _inside(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + os.sep)


def _is_key_literal(entry: str) -> bool:
    if any(c.isspace() for c in entry) or "-----" in entry or looks_private(entry):
        return True
    return "/" not in entry and not entry.endswith(".pub") and len(entry) > 64


# --- the loader -------------------------------------------------------------------------------------


class _Loader:
    def __init__(self, display_root: Path) -> None:
        self.root = Path(os.path.abspath(display_root))
        self.issues = IssueCollector()
        self.chain: list[tuple[Path, MarkedDict]] = []
        self.paths: dict[str, Path] = {}
        self.broken = False
        self.raw = MarkedDict(Location("<none>"))
        self.workspace = "/"  # the real workspace root, set by load(): every input stays inside it

    def display(self, path: Path | str) -> str:
        return display_path(path, self.root)

    def add(self, loc: Loc, message: str, hint: str | None = None) -> None:
        self.issues.issues.append(ConfigIssue(locate(self.raw, loc), format_path(loc), message, hint))

    # 1-2: the extends chain, root parent first

    def load_chain(self, path: Path, stack: list[Path]) -> None:
        display = self.display(path)
        self.paths[display] = path
        raw = read_yaml(path, display, self.issues)
        if raw is None:
            self.broken = True
            return
        extends = raw.get("extends")
        if isinstance(extends, str) and extends and not extends.startswith("/"):
            name = extends if extends.endswith(".yaml") else f"{extends}.yaml"
            parent = Path(os.path.abspath(path.parent / name))
            where = raw.marks["extends"]
            reals = [os.path.realpath(p) for p in [*stack, path]]
            if os.path.realpath(parent) in reals:
                cycle = [*[*stack, path][reals.index(os.path.realpath(parent)) :], parent]
                chain = " -> ".join(self.display(p) for p in cycle)
                self.issues.add(where, "extends", f"extends cycle: {chain}")
                self.broken = True
            elif not _inside(os.path.realpath(parent), self.workspace):
                self.issues.add(
                    where,
                    "extends",
                    f"parent recipe '{extends}' is outside the workspace {self.workspace} "
                    "(after following symlinks)",
                    "a parent recipe must be a file of the same workspace",
                )
                self.broken = True
            elif not parent.is_file():
                self.issues.add(
                    where,
                    "extends",
                    f"parent recipe '{extends}' not found (looked for {self.display(parent)})",
                )
                self.broken = True
            else:
                self.load_chain(parent, [*stack, path])
        self.chain.append((path, raw))

    # 3: validate each file alone, merge, validate the result

    def validate_each(self) -> bool:
        """Validate every file alone (keys it may inherit are optional); True when all are clean."""
        clean = True
        for _, raw in self.chain:
            try:
                Recipe.model_validate(to_plain(raw))
            except ValidationError as exc:
                for err in exc.errors():
                    if not _partial_missing(err):
                        clean = False
                        self.issues.issues.append(error_issue(err, raw))
        return clean

    def validate_merged(self, clean: bool) -> Recipe | None:
        merged = self.chain[0][1]
        for _, raw in self.chain[1:]:
            merged = merge(merged, raw)
        _dedup_packages(merged)
        self.raw = merged
        try:
            return Recipe.model_validate(to_plain(merged))
        except ValidationError as exc:
            for err in exc.errors():
                if clean or _partial_missing(err):
                    self.issues.issues.append(error_issue(err, merged))
            return None

    # 4: inputs on disk

    def declaring(self, loc: Loc) -> Path:
        return self.paths.get(locate(self.raw, loc).file, self.chain[-1][0])

    def input_path(self, loc: Loc, rel: str, what: str, shown: str | None = None) -> Path | None:
        """Resolve `rel` against the declaring file's dir; it must exist inside that dir or its parent."""
        decl_dir = self.declaring(loc).parent
        base = os.path.realpath(decl_dir)
        workspace = os.path.dirname(base)
        real = os.path.realpath(os.path.join(decl_dir, rel))
        shown = f"{what} '{rel}'" if shown is None else shown
        inside = _inside(real, base) or _inside(real, workspace)
        if not inside or not _inside(real, self.workspace):
            self.add(
                loc,
                f"{shown} escapes the workspace (it resolves outside {workspace})",
                "inputs must stay inside the recipe's directory or its parent directory",
            )
            return None
        if not os.path.exists(real):
            self.add(loc, f"{shown} not found (looked for {self.display(os.path.join(decl_dir, rel))})")
            return None
        return Path(real)

    def resolve_files(self) -> list[ResolvedFile]:
        files = self.raw.get("files")
        context: dict[str, Any] | None = None
        try:
            inputs = _TemplateInputs.model_validate(to_plain(self.raw))
            context = recipe_context(
                name=inputs.name,
                description=inputs.description,
                base=inputs.base.model_dump(),
                env=inputs.env,
                variables=inputs.vars,
                app=inputs.app.model_dump() if inputs.app else None,
                users=[u.model_dump() for u in inputs.users],
            )
        except ValidationError:
            pass  # already reported; skip rendering rather than report bogus template errors
        out: list[ResolvedFile] = []
        for i, item in enumerate(files if isinstance(files, list) else []):
            if not isinstance(item, dict):
                continue
            try:  # inputs are checked even when other keys of the entry are wrong
                entry: FileEntry | None = FileEntry.model_validate(to_plain(item))
            except ValidationError:
                entry = None
            src, template = item.get("src"), item.get("template")
            if isinstance(src, str):
                path = self.input_path(("files", i, "src"), src, "src")
                if path is not None and entry is not None and template is None:
                    out.append(ResolvedFile(*_common(i, entry), src=path, is_dir=path.is_dir()))
            if not isinstance(template, str):
                continue
            loc: Loc = ("files", i, "template")
            tpl = self.input_path(loc, template, "template")
            if tpl is None:
                continue
            if not tpl.is_file():
                self.add(loc, f"template '{template}' is not a file")
            elif context is not None:
                root = Path(os.path.dirname(os.path.realpath(self.declaring(loc).parent)))
                if not _inside(str(root), self.workspace):
                    root = Path(self.workspace)
                try:
                    text = render_template(tpl, context, root)
                except TemplateProblem as problem:
                    self.add(loc, str(problem))
                    continue
                if entry is not None and src is None:
                    out.append(ResolvedFile(*_common(i, entry), content=text.encode()))
        return out

    def resolve_keys(self) -> dict[str, list[str]]:
        keys = self.raw.get("keys")
        out: dict[str, list[str]] = {}
        for user, entries in keys.items() if isinstance(keys, dict) else []:
            if not isinstance(user, str) or not isinstance(entries, list):
                continue
            lines = out.setdefault(user, [])
            for j, entry in enumerate(entries):
                if not isinstance(entry, str):
                    continue
                loc: Loc = ("keys", user, j)
                literal = _is_key_literal(entry)
                shown = "key" if literal else f"key file '{entry}'"
                try:
                    if literal:
                        found = parse_key_file(entry)
                    else:
                        path = self.input_path(loc, entry, "key file")
                        if path is None:
                            continue
                        found = parse_key_file(path.read_text(encoding="utf-8"))
                except ValueError as exc:  # includes UnicodeDecodeError; messages never echo key text
                    reason = "not a text file" if isinstance(exc, UnicodeDecodeError) else str(exc)
                    self.add(loc, f"{shown}: {reason}")
                    continue
                except OSError as exc:
                    self.add(loc, f"{shown}: cannot read ({exc.strerror})")
                    continue
                lines.extend(k for k in found if k not in lines)
        return out

    def load(self, path: Path) -> LoadedRecipe:
        path = Path(os.path.abspath(path))
        # the workspace is the parent of the recipe's directory (recipes/web.yaml → the workspace),
        # taken after symlinks; no parent recipe, template or input may resolve outside it
        self.workspace = os.path.realpath(path.parent.parent)
        if not _inside(os.path.realpath(path), self.workspace):
            raise ConfigError(
                [
                    ConfigIssue(
                        Location(self.display(path)),
                        "",
                        f"the recipe is a link to {os.path.realpath(path)}, outside the workspace",
                        "keep recipes as files of the workspace",
                    )
                ]
            )
        self.load_chain(path, [])
        clean = self.validate_each()
        if self.broken or not self.chain:
            raise ConfigError(final_issues(self.issues.issues))
        recipe = self.validate_merged(clean)
        self.issues.issues.extend(semantic_issues(self.raw))
        resolved = self.resolve_files()
        keys = self.resolve_keys()
        if self.issues.issues or recipe is None:
            raise ConfigError(final_issues(self.issues.issues))
        return LoadedRecipe(
            recipe=recipe,
            path=path,
            sources=[p for p, _ in self.chain],
            raw=self.raw,
            resolved_files=resolved,
            keys=keys,
        )


def load_recipe(path: Path, *, display_root: Path | None = None) -> LoadedRecipe:
    """Load, merge and check a recipe; raise one ConfigError listing every problem of every file."""
    return _Loader(display_root if display_root is not None else Path.cwd()).load(path)
