"""The content-addressed image store (images/)."""

from sandbox.store.diff import ImageDiff, diff_manifests
from sandbox.store.store import ImageStore

__all__ = ["ImageDiff", "ImageStore", "diff_manifests"]
