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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sandbox.build.hostapt import PackageRecord, PrivateApt
from sandbox.config import LoadedRecipe
from sandbox.errors import ConfigError, ConfigIssue, LockError
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


def read_lock(path: Path) -> Lock:
    try:
        doc = json.loads(path.read_text())
        pkgs = tuple(PackageRecord(**p) for p in doc["packages"])
        if doc.get("lock_version") != LOCK_VERSION:
            raise ValueError(f"lock_version {doc.get('lock_version')!r}, expected {LOCK_VERSION}")
        lock = Lock(
            recipe=str(doc["recipe"]),
            inputs=str(doc["inputs"]),
            suite=str(doc["suite"]),
            variant=str(doc["variant"]),
            architecture=str(doc["architecture"]),
            source_date_epoch=int(doc["source_date_epoch"]),
            packages=pkgs,
        )
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise LockError(
            f"{path}: malformed lock file ({e})", hint=f"recreate it: sandbox lock {path.stem}"
        ) from e
    for p in lock.packages:
        if not re.fullmatch(r"[0-9a-f]{64}", p.sha256) or "/" in p.filename or p.filename.startswith("."):
            raise LockError(
                f"{path}: malformed entry for package {p.name!r}",
                hint=f"recreate it: sandbox lock {path.stem}",
            )
    return lock


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
