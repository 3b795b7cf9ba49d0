"""load_profile: read a profile and its `extends` chain, merge, validate, check mounts; env names."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sandbox.config.merging import concat_merge, deep_merge, display_path
from sandbox.config.names import PROFILE_NAME_HINT, PROFILE_NAME_RE
from sandbox.config.profile import NEITHER, NEITHER_HINT, ONE_FILE, PARTIAL, Profile
from sandbox.config.validate import error_issue, format_path, sort_issues
from sandbox.config.yamlmarks import MarkedDict, locate, read_yaml, to_plain
from sandbox.errors import ConfigError, ConfigIssue, IssueCollector, Location, NotFound

Loc = tuple[str | int, ...]
DEEP_MERGED = ("resources", "health", "router", "env", "promotion")
REPLACED_BY = {"mounts": "dest"}  # concatenated; a child item replaces the parent's with the same dest
ANY_ADDRESS = "0.0.0.0"
EITHER = ("recipe", "image")  # a child setting one clears the parent's other


@dataclass(frozen=True)
class LoadedProfile:
    """A validated profile, with where each value came from."""

    profile: Profile
    path: Path
    sources: list[Path]
    raw: MarkedDict

    def where(self, loc: Sequence[str | int]) -> Location:
        """The file:line of a key path, e.g. where(("router", "port")), even when inherited."""
        return locate(self.raw, loc)

    def digest(self) -> str:
        """sha256 of the canonical JSON of the merged profile."""
        data = json.dumps(self.profile.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(data.encode()).hexdigest()


def merge_profiles(parent: MarkedDict, child: MarkedDict) -> MarkedDict:
    """Child over parent; marks keep pointing to the defining file.

    `resources`, `health`, `router`, `env` are deep-merged; `mounts` are concatenated with a child
    mount replacing the parent's with the same `dest`; other lists and scalars are replaced; `name`
    is never inherited; a child that sets `recipe` drops the parent's `image` and vice versa.
    """
    dropped = {other for key, other in (EITHER, EITHER[::-1]) if child.get(key) is not None}
    out = MarkedDict(child.location)
    for key, value in parent.items():
        if (key == "name" or key in dropped) and key not in child:
            continue
        if key not in child:
            out.put(key, value, parent.marks[key])
        elif key in DEEP_MERGED:
            out.put(key, deep_merge(value, child[key]), child.marks[key])
        elif key in REPLACED_BY:
            out.put(key, concat_merge(value, child[key], REPLACED_BY[key]), child.marks[key])
        else:
            out.put(key, child[key], child.marks[key])
    for key, value in child.items():
        if key not in out:
            out.put(key, value, child.marks[key])
    return out


def _top_missing(err: Any) -> bool:
    """A missing top-level key (the name): a file of a chain may leave it to the merge."""
    return bool(err["type"] == "missing" and len(err["loc"]) == 1)


class _Loader:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.issues = IssueCollector()
        self.chain: list[tuple[Path, MarkedDict]] = []
        self.broken = False
        self.raw = MarkedDict(Location("<none>"))

    def display(self, path: Path | str) -> str:
        return display_path(path, self.root)

    def add(self, loc: Loc, message: str, hint: str | None = None) -> None:
        self.issues.issues.append(ConfigIssue(locate(self.raw, loc), format_path(loc), message, hint))

    def load_chain(self, path: Path, stack: list[Path]) -> None:
        """Read `path` and its parents, root parent first into self.chain."""
        raw = read_yaml(path, self.display(path), self.issues)
        if raw is None:
            self.broken = True
            return
        name = raw.get("name")
        if isinstance(name, str) and name != path.stem:
            self.issues.add(
                raw.marks["name"],
                "name",
                f"name '{name}' does not match the file name '{path.name}'",
                f"set name: {path.stem}, or rename the file to {name}.yaml",
            )
        extends = raw.get("extends")
        if extends is not None:
            if not isinstance(extends, str) or not re.fullmatch(PROFILE_NAME_RE, extends):
                self.broken = True  # reported by the validation of this file
            else:
                self.follow(path, stack, extends, raw.marks["extends"])
        self.chain.append((path, raw))

    def follow(self, path: Path, stack: list[Path], extends: str, where: Location) -> None:
        parent = Path(os.path.abspath(path.parent / f"{extends}.yaml"))
        reals = [os.path.realpath(p) for p in [*stack, path]]
        if os.path.realpath(parent) in reals:
            cycle = [*[*stack, path][reals.index(os.path.realpath(parent)) :], parent]
            chain = " -> ".join(self.display(p) for p in cycle)
            self.issues.add(where, "extends", f"extends cycle: {chain}", "remove one of these extends")
            self.broken = True
        elif os.path.dirname(os.path.realpath(parent)) != os.path.realpath(path.parent):
            self.issues.add(
                where,
                "extends",
                f"parent profile '{extends}' is a link to {os.path.realpath(parent)}, "
                f"outside {self.display(path.parent)}",
                "a parent profile must be a file of the same profiles directory",
            )
            self.broken = True
        elif not parent.is_file():
            known = sorted(p.stem for p in path.parent.glob("*.yaml") if p != path)
            self.issues.add(
                where,
                "extends",
                f"parent profile '{extends}' not found (looked for {self.display(parent)})",
                f"profiles there: {', '.join(known)}" if known else None,
            )
            self.broken = True
        else:
            self.load_chain(parent, [*stack, path])

    def validate_each(self) -> bool:
        """Validate every file alone (recipe/image and the name may come from the merge).

        Rules across keys (hosts against instances, backend, router ...) wait for the merged
        profile: a parent's hosts may meet a child's instances.
        """
        clean = True
        for _, raw in self.chain:
            try:
                Profile.model_validate(to_plain(raw), context={PARTIAL: True, ONE_FILE: True})
            except ValidationError as exc:
                for err in exc.errors():
                    if not _top_missing(err):
                        clean = False
                        self.issues.issues.append(error_issue(err, raw, Profile))
        return clean

    def validate_merged(self, clean: bool) -> Profile | None:
        merged = self.chain[0][1]
        for _, raw in self.chain[1:]:
            merged = merge_profiles(merged, raw)
        self.raw = merged
        if merged.get("recipe") is None and merged.get("image") is None:
            self.add(("recipe",), NEITHER, NEITHER_HINT)
        try:
            profile = Profile.model_validate(to_plain(merged), context={PARTIAL: True})
        except ValidationError as exc:
            for err in exc.errors():
                if clean or _top_missing(err):
                    self.issues.issues.append(error_issue(err, merged, Profile))
            return None
        return profile

    def check_mounts(self) -> None:
        mounts = self.raw.get("mounts")
        for i, mount in enumerate(mounts if isinstance(mounts, list) else []):
            src = mount.get("src") if isinstance(mount, dict) else None
            if not isinstance(src, str) or not src or "\0" in src:
                continue
            host = os.path.normpath(os.path.join(self.root, src))
            if not os.path.exists(host):
                self.add(
                    ("mounts", i, "src"),
                    f"mount source '{src}' not found on the host (looked for {host})",
                    None if os.path.isabs(src) else "relative sources are relative to the workspace root",
                )

    def check_ports(self, profile: Profile) -> None:
        """Two forwards (or a forward and the router) on one host address, port and protocol."""
        binds: list[tuple[Loc, str, int, str]] = []
        if profile.router is not None and isinstance(profile.router.port, int):
            binds.append((("router", "port"), profile.router.listen, profile.router.port, "tcp"))
        binds.extend((("ports", i, "host"), p.address, p.host, p.proto) for i, p in enumerate(profile.ports))
        for n, (loc, address, port, proto) in enumerate(binds):
            for other, other_address, other_port, other_proto in binds[:n]:
                same_address = address == other_address or ANY_ADDRESS in (address, other_address)
                if (port, proto) == (other_port, other_proto) and same_address:
                    self.add(
                        loc, f"host port {port}/{proto} on {address} is also used by {format_path(other)}"
                    )
                    break

    def load(self, path: Path) -> LoadedProfile:
        path = Path(os.path.abspath(path))
        self.load_chain(path, [])
        clean = self.validate_each()
        if self.broken or not self.chain:
            raise ConfigError(sort_issues(self.issues.issues))
        profile = self.validate_merged(clean)
        self.check_mounts()
        if profile is not None:
            self.check_ports(profile)
        if self.issues.issues or profile is None:
            raise ConfigError(sort_issues(self.issues.issues))
        return LoadedProfile(profile=profile, path=path, sources=[p for p, _ in self.chain], raw=self.raw)


def load_profile(path: Path, *, display_root: Path | None = None) -> LoadedProfile:
    """Load, merge and check a profile; raise one ConfigError listing every problem of every file.

    `display_root` is the workspace root: file names in messages are relative to it and relative
    mount sources resolve against it. It defaults to the parent of the profile's directory.
    """
    root = display_root if display_root is not None else Path(os.path.abspath(path)).parent.parent
    return _Loader(root).load(path)


def load_profile_by_name(profiles_dir: Path, name: str, *, display_root: Path | None = None) -> LoadedProfile:
    """Load `profiles_dir/NAME.yaml`; NotFound (listing the profiles there) when it does not exist."""
    path = profiles_dir / f"{name}.yaml"
    if not re.fullmatch(PROFILE_NAME_RE, name) or not path.is_file():
        known = sorted(p.stem for p in profiles_dir.glob("*.yaml")) if profiles_dir.is_dir() else []
        where = display_path(profiles_dir, display_root) if display_root is not None else str(profiles_dir)
        listing = f"profiles there: {', '.join(known)}" if known else f"create {where}/NAME.yaml"
        if not re.fullmatch(PROFILE_NAME_RE, name):
            raise NotFound(f"{name!r} is not a valid profile name ({PROFILE_NAME_HINT})", listing)
        raise NotFound(f"profile {name!r} not found in {where}", listing)
    root = display_root if display_root is not None else Path(os.path.abspath(profiles_dir)).parent
    return _Loader(root).load(path)
