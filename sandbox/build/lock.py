"""Lock files: every package of an image pinned to a version and a .deb sha256.

`recipes/web.lock` sits beside `recipes/web.yaml`. It records what the recipe
asked for (`inputs`, a digest of base + packages) so that `--locked` can tell
when the recipe moved on, and a SOURCE_DATE_EPOCH that every build from the
lock uses. It names no mirror: packages come from the host's sources or the
package cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sandbox.build.hostapt import (
    ARCH_RE,
    SUITE_RE,
    Loc,
    PackageRecord,
    PrivateApt,
    is_int,
    match,
    record_problems,
)
from sandbox.config import LoadedRecipe
from sandbox.errors import ConfigError, ConfigIssue, IssueCollector, LockError
from sandbox.fsutil import atomic_write

LOCK_VERSION = 1

# what mmdebstrap installs for each variant, before the recipe's own packages
VARIANT_SELECTION: dict[str, list[str]] = {
    "essential": ["?essential"],
    "apt": ["?essential", "apt"],
    "required": ["?essential", "?priority(required)", "apt"],
    "minbase": ["?essential", "?priority(required)", "apt"],
    "important": ["?essential", "?priority(required)", "?priority(important)", "apt"],
    "standard": ["?essential", "?priority(required)", "?priority(important)", "?priority(standard)", "apt"],
}


@dataclass(frozen=True)
class Lock:
    recipe: str
    inputs: str
    suite: str
    variant: str
    architecture: str
    source_date_epoch: int
    packages: tuple[PackageRecord, ...]

    def __post_init__(self) -> None:
        problems = lock_problems(json.loads(self.to_json()))
        if problems:  # read_lock says where; this guards every other way a Lock is made
            from sandbox.config.validate import format_path

            loc, problem = problems[0]
            raise LockError(f"malformed lock for recipe {self.recipe!r}: {format_path(loc)}: {problem}")

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "lock_version": LOCK_VERSION,
            "recipe": self.recipe,
            "inputs": self.inputs,
            "suite": self.suite,
            "variant": self.variant,
            "architecture": self.architecture,
            "source_date_epoch": self.source_date_epoch,
            "packages": [asdict(p) for p in sorted(self.packages, key=lambda p: p.name)],
        }
        # one package per line: reviewable diffs, still plain JSON
        head = json.dumps({k: v for k, v in doc.items() if k != "packages"}, indent=1, sort_keys=True)
        pkgs = ",\n".join("  " + json.dumps(p, sort_keys=True) for p in doc["packages"])
        return head[:-2] + ',\n "packages": [\n' + pkgs + "\n ]\n}\n"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def package_versions(self) -> dict[str, str]:
        return {p.name: p.version for p in self.packages}


def lock_path(recipe_path: Path) -> Path:
    return recipe_path.with_suffix(".lock")


def package_inputs(loaded: LoadedRecipe) -> str:
    """Digest of what decides the package set: base settings and packages."""
    r = loaded.recipe
    doc = {"base": r.base.model_dump(mode="json"), "packages": sorted(r.packages)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# what each lock field may be: the recipe's own rules (recipe.Base); packages: hostapt.record_problems
RECIPE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")


def lock_problems(doc: Any) -> list[tuple[Loc, str]]:
    """What is wrong with a parsed lock file: every field by a strict pattern, no path anywhere."""
    if not isinstance(doc, dict):
        return [((), "a lock file is a JSON object")]
    if doc.get("lock_version") != LOCK_VERSION:
        return [(("lock_version",), f"lock_version {doc.get('lock_version')!r}, expected {LOCK_VERSION}")]
    out: list[tuple[Loc, str]] = []
    checks: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
        ("recipe", lambda v: match(RECIPE_RE, v), "a recipe name"),
        ("inputs", lambda v: match(HEX64_RE, v), "a sha256 digest"),
        ("suite", lambda v: match(SUITE_RE, v), "a Debian suite (lowercase letters)"),
        ("variant", lambda v: isinstance(v, str) and v in VARIANT_SELECTION, "an mmdebstrap variant"),
        ("architecture", lambda v: match(ARCH_RE, v), "a Debian architecture"),
        ("source_date_epoch", lambda v: is_int(v, 0, 1 << 40), "a time in seconds since 1970"),
    )
    for key, ok, what in checks:
        if key not in doc:
            out.append(((), f"missing key {key!r}"))
        elif not ok(doc[key]):
            out.append(((key,), f"{str(doc[key])[:80]!r} is not {what}"))
    pkgs = doc.get("packages")
    if not isinstance(pkgs, list):
        out.append((("packages",), "packages must be a list"))
    else:
        for i, p in enumerate(pkgs):
            out += record_problems(p, ("packages", i))
    known = {"lock_version", "packages", *(c[0] for c in checks)}
    out += [((k,), f"unknown key {k!r}") for k in doc if k not in known]
    return out


def located(path: Path, problems: list[tuple[Loc, str]]) -> list[str]:
    """Each problem as "FILE:LINE: key.path: problem" (JSON is YAML: the marked loader finds lines)."""
    from sandbox.config.validate import format_path
    from sandbox.config.yamlmarks import locate, read_yaml

    data = read_yaml(path, str(path), IssueCollector())
    out = []
    for loc, problem in problems:
        where = locate(data, loc) if data is not None else None
        line = f"{path}:{where.line}" if where is not None and where.line else str(path)
        name = ""
        if len(loc) >= 2 and loc[0] == "packages" and isinstance(loc[1], int) and data is not None:
            entry = data["packages"][loc[1]]
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                name = f" (package {entry['name'][:60]!r})"
        out.append(f"{line}: {format_path(loc) or 'top level'}{name}: {problem}")
    return out


def read_lock(path: Path) -> Lock:
    """The lock at `path`, every field checked (LockError naming file:line otherwise)."""
    hint = f"recreate it: sandbox lock {path.stem}"
    text = path.read_text()
    try:
        doc = json.loads(text)
    except ValueError as e:
        where = f"{path}:{e.lineno}" if isinstance(e, json.JSONDecodeError) else str(path)
        raise LockError(f"{where}: malformed lock file ({e})", hint=hint) from e
    problems = lock_problems(doc)
    if problems:
        raise LockError("malformed lock file:\n  " + "\n  ".join(located(path, problems)), hint=hint)
    return Lock(
        recipe=doc["recipe"],
        inputs=doc["inputs"],
        suite=doc["suite"],
        variant=doc["variant"],
        architecture=doc["architecture"],
        source_date_epoch=doc["source_date_epoch"],
        packages=tuple(PackageRecord(**p) for p in doc["packages"]),
    )


def write_lock(path: Path, lock: Lock) -> None:
    atomic_write(path, lock.to_json().encode())


def resolve(loaded: LoadedRecipe, apt: PrivateApt, *, now: int | None = None) -> Lock:
    """Resolve the recipe's packages (with dependencies) to exact versions and sha256s."""
    r = loaded.recipe
    selection = VARIANT_SELECTION[r.base.variant] + list(r.packages)
    installs, missing = apt.simulate(selection)
    if missing:
        issues = []
        for name in missing:
            idx = next((i for i, p in enumerate(r.packages) if p == name), None)
            where = loaded.where(("packages", idx) if idx is not None else ("packages",))
            issues.append(
                ConfigIssue(
                    where,
                    f"packages[{idx}]" if idx is not None else "packages",
                    f"package {name} not found in {r.base.suite}",
                    hint=f"check the name with `apt-cache search {name}`",
                )
            )
        raise ConfigError(issues)
    records = apt.records([(n, v) for n, v, _ in installs])
    if len(records) != len(installs):
        raise LockError("apt-cache did not describe every resolved package", hint="run `sandbox lock` again")
    return Lock(
        recipe=r.name,
        inputs=package_inputs(loaded),
        suite=r.base.suite,
        variant=r.base.variant,
        architecture=r.base.architecture,
        source_date_epoch=int(time.time()) if now is None else now,
        packages=tuple(sorted(records, key=lambda p: p.name)),
    )
