"""The one exception tree of sandbox: every error carries a message and a hint."""

from __future__ import annotations

from dataclasses import dataclass, field


class SandboxError(Exception):
    """Root of every expected error. The CLI prints `message` and `hint`, exit 1."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "message": self.message, "hint": self.hint}


@dataclass(frozen=True)
class Location:
    """A place in a config file: file path (as given), 1-based line and column."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file, with where it is and the key path."""

    location: Location
    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.location}: {self.path}: " if self.path else f"{self.location}: "
        text = where + self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


class ConfigError(SandboxError):
    """One or more problems in recipe/profile files, all reported at once."""

    def __init__(self, issues: list[ConfigIssue], hint: str | None = None) -> None:
        self.issues = list(issues)
        n = len(self.issues)
        head = f"{n} problem{'s' if n != 1 else ''} in configuration"
        super().__init__(head + ":\n" + "\n".join(f"  {i}" for i in self.issues), hint)

    def to_dict(self) -> dict[str, object]:
        d = super().to_dict()
        d["issues"] = [i.to_dict() for i in self.issues]
        return d


class BuildError(SandboxError):
    """An image build failed (mmdebstrap, apt, the app layer)."""


class LockError(SandboxError):
    """A recipe's lock file is missing, stale or malformed."""


class StoreError(SandboxError):
    """The image store is corrupt or an operation on it failed."""


class NotFound(SandboxError):
    """A named thing (image, recipe, env) does not exist."""


class ToolMissing(SandboxError):
    """A host tool sandbox needs (mmdebstrap, apt, lxc ...) is not installed."""


class EnvExists(SandboxError):
    """An environment name is already taken (by whom and in which state is in the message)."""


class EnvNotFound(NotFound):
    """A named environment does not exist in the state database."""


class QuotaExceeded(SandboxError):
    """An owner already has as many environments of a profile as `max_per_owner` allows."""


class StateError(SandboxError):
    """The state database is unusable (newer schema, locked, corrupt) or an allocation failed."""


@dataclass
class IssueCollector:
    """Collects ConfigIssues so that every problem of a file is reported at once."""

    issues: list[ConfigIssue] = field(default_factory=list)

    def add(self, location: Location, path: str, message: str, hint: str | None = None) -> None:
        self.issues.append(ConfigIssue(location, path, message, hint))

    def raise_if_any(self) -> None:
        if self.issues:
            raise ConfigError(self.issues)
