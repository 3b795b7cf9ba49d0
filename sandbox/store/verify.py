"""`sandbox image verify`: recompute every digest of an image from its bytes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sandbox.store.layers import Index, index_of_tar, merge_indexes
from sandbox.store.store import ImageStore


@dataclass
class VerifyReport:
    digest: str
    problems: list[str] = field(default_factory=list)
    checked_files: int = 0
    checked_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "ok": self.ok,
            "problems": self.problems,
            "checked_files": self.checked_files,
            "checked_bytes": self.checked_bytes,
        }


def verify_image(store: ImageStore, ref: str) -> VerifyReport:
    digest = store.resolve(ref)
    report = VerifyReport(digest)
    data = store.manifest_path(digest).read_bytes()
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        report.problems.append(f"manifest digest is {actual}, expected {digest}")
    try:
        manifest = json.loads(data)
        manifest["layers"], manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        report.problems.append(f"manifest is not a valid sandbox manifest ({e})")
        return report
    indexes: list[Index] = []
    for layer in manifest["layers"]:
        d = layer["digest"]
        path = store.blob_path(d)
        if not path.is_file():
            report.problems.append(f"{layer['kind']} layer {d} is missing")
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        report.checked_bytes += path.stat().st_size
        if "sha256:" + h.hexdigest() != d:
            report.problems.append(f"{layer['kind']} layer {d} is corrupt (sha256 {h.hexdigest()[:12]}…)")
            continue
        with open(path, "rb") as f:
            index = index_of_tar(f)
        if store.layer_index_path(d).is_file() and index != store.layer_index(d):
            report.problems.append(f"{layer['kind']} layer {d}: stored file index differs from the tar")
        indexes.append(index)
    if len(indexes) == len(manifest["layers"]):
        files = merge_indexes(indexes)
        report.checked_files = len(files)
        want = manifest["files"]
        for name in sorted(set(files) | set(want)):
            if files.get(name) != want.get(name):
                report.problems.append(f"file {name}: manifest and layers disagree")
                if len(report.problems) > 20:
                    report.problems.append("… (more differences not shown)")
                    break
    return report
