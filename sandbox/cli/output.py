"""Rendering events and results: rich progress for people, JSON for programs."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from sandbox.cli.markup import escape, strip
from sandbox.events import Event

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status


class Output:
    """Turns core events into progress lines (stderr) and results into text or JSON (stdout)."""

    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet or as_json
        self._err: Console | None = None
        self._out: Console | None = None
        self._status: Status | None = None
        self._phase_started: dict[str, float] = {}

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._err

    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            self._out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
        return self._out

    def _say(self, text: str) -> None:
        """A line on stderr: rich on a terminal, plain text otherwise."""
        if sys.stderr.isatty():
            self.err.print(text)
        else:
            sys.stderr.write(strip(text) + "\n")

    # -- events ------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if event.kind == "phase-start":
            self._phase_started[event.phase] = time.monotonic()
            self._stop()
            if sys.stderr.isatty():
                self._status = self.err.status(f"[bold]{event.phase}[/] {escape(event.message)}")
                self._status.start()
        elif event.kind == "progress" and self._status is not None:
            step = f" [{event.current}/{event.total}]" if event.current and event.total else ""
            self._status.update(f"[bold]{event.phase}[/]{step} {escape(event.message)}")
        elif event.kind == "phase-end":
            self._stop()
            secs = event.data.get("seconds", 0.0)
            self._say(f"[green]✓[/] [bold]{event.phase:<9}[/] {escape(event.message)} [dim]({secs:.2f}s)[/]")
        elif event.kind == "warning":
            self._stop()
            self._say(f"[yellow]![/] {escape(event.message)}")
        elif event.kind == "log":
            if self._status is not None:
                self._status.update(f"[bold]{event.phase}[/] {escape(event.message)}")
            else:
                self._say(f"[dim]{escape(event.message)}[/]")

    def _stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def close(self) -> None:
        self._stop()

    # -- results -----------------------------------------------------------
    def result(self, data: Any, text: str | None = None) -> None:
        self._stop()
        if self.as_json:
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        elif text is not None:
            if sys.stdout.isatty():
                self.out.print(text)
            else:
                sys.stdout.write(strip(text) + "\n")

    def error(self, payload: dict[str, Any], message: str, hint: str | None) -> None:
        self._stop()
        if self.as_json:
            sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
            return
        self._say(f"[bold red]error:[/] {escape(message)}")
        if hint:
            self._say(f"[cyan]hint:[/] {escape(hint)}")
