"""Root side: what the promote and rollback forms of an env's page offer, read from the state DB.

- **promote**: every other env the user may view, of another profile, with its current image. That
  image is *verified* when its latest `sandbox verify` on that very env passed (`Promoter.verify`
  records it; `Deploys.verification`). Only a verified one can be pressed; the job carries that
  exact digest, so a later `up` of the source changes nothing about what gets promoted.
- **rollback**: the env's kept releases: the images its deploys ran before (from and to images of
  its history), newest first, without the one it runs now. One whose image is gone from the store
  (`sandbox gc --images`, `image rm`) is shown disabled, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sandbox.promote.deploys import Deploys
from sandbox.state import StateDB
from sandbox.web.roles import User, may

MAX_SOURCES = 12
MAX_RELEASES = 10


def promote_sources(
    state: StateDB, user: User, target: Mapping[str, Any], every: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The envs `target` could be promoted from: {source, image, verified, detail, when, reason}.

    `reason` is None for one that may be pressed, else why not. Verified ones come first."""
    deploys = Deploys(state)
    out: list[dict[str, Any]] = []
    for e in every:
        if e["name"] == target["name"] or e["profile"] == target["profile"]:
            continue
        if not may(user, "view", e["profile"]):
            continue
        image = str(e["image"])
        seen = deploys.verification(image, str(e["name"]))
        reason = None
        if seen is None:
            reason = f"{e['name']}'s image has not been verified there (press verify on {e['name']})"
        elif not seen[0]:
            reason = f"the latest verify of {e['name']}'s image failed: {seen[1][:200]}"
        elif image == target["image"]:
            reason = f"{target['name']} already runs this image"
        out.append(
            {
                "source": e["name"],
                "image": image,
                "verified": seen is not None and seen[0],
                "detail": seen[1][:200] if seen else None,
                "when": seen[2] if seen else None,
                "reason": reason,
            }
        )
    out.sort(key=lambda s: (s["reason"] is not None, s["source"]))
    return out[:MAX_SOURCES]


def releases(state: StateDB, target: Mapping[str, Any], present: set[str]) -> list[dict[str, Any]]:
    """The images `target` ran before, newest first: {image, when, deploy, reason}."""
    out: list[dict[str, Any]] = []
    seen = {str(target["image"])}
    for d in Deploys(state).history(str(target["name"]), 100):
        ran = [d.to_image] if d.state == "done" else []
        for image in [*ran, d.from_image]:
            if image in seen:
                continue
            seen.add(image)
            gone = image not in present
            out.append(
                {
                    "image": image,
                    "when": d.finished or d.started,
                    "deploy": d.id,
                    "reason": "its image is gone from the store" if gone else None,
                }
            )
    return out[:MAX_RELEASES]
