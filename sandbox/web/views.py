"""What the root side shows of envs and images: the very view functions the CLI's `--json` prints
(`Envs.ls`/`Envs.view` -> EnvView.to_dict, `ImageStore.summaries`), behind a small protocol so that
the RPC tests can run without a backend."""

from __future__ import annotations

from typing import Any, Protocol

from sandbox.workspace import Workspace


class Views(Protocol):
    def envs(self) -> list[dict[str, Any]]:
        """`sandbox ls --json`."""
        ...

    def env(self, name: str) -> dict[str, Any]:
        """`sandbox status NAME --json` without the live probe; NotFound for an unknown env."""
        ...

    def images(self) -> list[dict[str, Any]]:
        """`sandbox images --json`."""
        ...


class WorkspaceViews:
    """The real views of workspace `ws` (an Envs per call: settings changes are seen at once)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def envs(self) -> list[dict[str, Any]]:
        from sandbox.envs import Envs

        return [v.to_dict() for v in Envs(self.ws).ls()]

    def env(self, name: str) -> dict[str, Any]:
        from sandbox.envs import Envs

        envs = Envs(self.ws)
        return {**envs.view(name).to_dict(), "events": envs.events(name, limit=10)}

    def images(self) -> list[dict[str, Any]]:
        from sandbox.store import ImageStore

        return [dict(s.__dict__) for s in ImageStore(self.ws.images).summaries()]
