"""`sandbox image diff A B`: what changed between two images.

Promotion plans from this: static files only, code, migrations, or system
packages and users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# fields of a file entry that make it "changed"
_COMPARED = ("type", "mode", "uid", "gid", "sha256", "target", "dev")


@dataclass
class ImageDiff:
    a: str
    b: str
    packages_added: dict[str, str] = field(default_factory=dict)
    packages_removed: dict[str, str] = field(default_factory=dict)
    packages_changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    files_added: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    files_changed: list[str] = field(default_factory=list)
    app_changed: bool = False
    users_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.packages_added
            or self.packages_removed
            or self.packages_changed
            or self.files_added
            or self.files_removed
            or self.files_changed
            or self.app_changed
            or self.users_changed
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.empty,
            "packages": {
                "added": self.packages_added,
                "removed": self.packages_removed,
                "changed": {k: {"from": v[0], "to": v[1]} for k, v in self.packages_changed.items()},
            },
            "files": {
                "added": self.files_added,
                "removed": self.files_removed,
                "changed": self.files_changed,
            },
            "app_changed": self.app_changed,
            "users_changed": self.users_changed,
        }


def diff_manifests(a_digest: str, a: dict[str, Any], b_digest: str, b: dict[str, Any]) -> ImageDiff:
    d = ImageDiff(a=a_digest, b=b_digest)
    pa, pb = a["packages"], b["packages"]
    for name in sorted(set(pa) | set(pb)):
        if name not in pa:
            d.packages_added[name] = pb[name]
        elif name not in pb:
            d.packages_removed[name] = pa[name]
        elif pa[name] != pb[name]:
            d.packages_changed[name] = (pa[name], pb[name])
    fa, fb = a["files"], b["files"]
    for path in sorted(set(fa) | set(fb)):
        if path not in fa:
            d.files_added.append(path)
        elif path not in fb:
            d.files_removed.append(path)
        elif any(fa[path].get(k) != fb[path].get(k) for k in _COMPARED):
            d.files_changed.append(path)
    d.app_changed = a.get("app") != b.get("app")
    d.users_changed = a.get("users") != b.get("users")
    return d
