"""One structured event stream that the CLI, JSON output and the web frontend render.

Core code never prints: it calls an EventSink with Events. A phase is a named
step (e.g. "base", "app", "normalize"); `current`/`total` give progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["phase-start", "phase-end", "progress", "log", "warning", "result"]


@dataclass(frozen=True)
class Event:
    kind: Kind
    phase: str = ""
    message: str = ""
    current: int | None = None
    total: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", {})}


EventSink = Callable[[Event], None]


def null_sink(event: Event) -> None:
    """A sink that drops every event (for tests and library callers)."""


class Recorder:
    """A sink that keeps every event; handy in tests."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def phases(self) -> list[str]:
        return [e.phase for e in self.events if e.kind == "phase-start"]
