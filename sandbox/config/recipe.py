"""The recipe schema: pydantic models whose Field descriptions double as documentation."""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from sandbox.config.cron import HINT, parse_field
from sandbox.config.fields import (
    AbsGlob,
    AbsPath,
    EnvKey,
    EnvValue,
    Line,
    PackageName,
    RecipeName,
    StrictInt,
    UserName,
    _check,
    _no_newline,
    _scalar_to_str,
    fail,
)

UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".timer",
    ".target",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".slice",
    ".scope",
    ".device",
)
RESERVED_VARS = frozenset({"recipe", "env", "vars", "app", "users"})


def _unit(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9@_:][A-Za-z0-9@._:-]*", value):
        fail(f"{value!r} is not a valid systemd unit name")
    return value if value.endswith(UNIT_SUFFIXES) else value + ".service"


def _var_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        fail(f"{value!r} is not a valid template variable name")
    if value in RESERVED_VARS:
        reserved = ", ".join(sorted(RESERVED_VARS))
        fail(f"{value!r} is reserved in templates", f"rename it; reserved: {reserved}")
    return value


def _sudo_entry(value: str) -> str:
    text = value.strip()
    words = text.split()
    if not words or words[0].upper() == "ALL":
        fail(
            "sudo entry grants ALL commands",
            "sandbox only grants named commands: give each absolute command, "
            "e.g. /usr/sbin/service gunicorn reload",
        )
    if not text.startswith("/"):
        fail(
            f"sudo entry {value!r} must start with an absolute command path",
            "e.g. /usr/bin/systemctl restart app",
        )
    if any(c in text for c in ",\\\n\r\0") or any(c in words[0] for c in "*?["):
        fail(f"sudo entry {value!r} contains characters sudoers treats specially (',' '\\' or a glob)")
    return text


def _url_path(value: str) -> str:
    if not value.startswith("/"):
        fail(f"{value!r} must be a URL path starting with '/'")
    return _no_newline(value)


def _extends(value: str) -> str:
    if value.endswith(".yaml"):
        if value.startswith("/"):
            fail("extends must be a recipe name or a path relative to this file")
        return value
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
        fail(f"extends {value!r} is neither a recipe name nor a relative path ending .yaml")
    return value


def _dest(value: str) -> str:
    if not value.startswith("/"):
        fail(f"dest {value!r} must be an absolute path in the image")
    if ".." in value.split("/"):
        fail(f"dest {value!r} escapes the image root ('..' component)")
    if posixpath.normpath(value) in ("/", "//"):
        fail("dest must not be '/'")
    if any(p.startswith(".wh.") for p in value.split("/")):
        fail(f"dest {value!r}: a name starting with .wh. is an overlay whiteout in an image layer")
    return _no_newline(value)


def _mode(value: Any) -> Any:
    if isinstance(value, bool | int | float):
        fail(f"mode must be a quoted octal string, YAML read the number {value}", 'quote it: mode: "0644"')
    if isinstance(value, str) and not re.fullmatch(r"0?[0-7]{3,4}", value):
        fail(f"mode {value!r} is not an octal mode", 'e.g. mode: "0644"')
    return value


# --- cron fields -------------------------------------------------------------------------------

CRON_HINT = HINT


def cron_field_error(field: str, value: str) -> str | None:
    """Return why `value` is not valid cron syntax for `field`, or None when it is."""
    try:
        parse_field(field, value)
    except ValueError as exc:
        return str(exc)
    return None


def _cron(field: str) -> AfterValidator:
    def check(value: str) -> str:
        reason = cron_field_error(field, value)
        if reason:
            fail(f"invalid {field} {value!r}: {reason}", CRON_HINT)
        return value

    return AfterValidator(check)


Minute = Annotated[str, BeforeValidator(_scalar_to_str), _cron("minute")]
Hour = Annotated[str, BeforeValidator(_scalar_to_str), _cron("hour")]
Day = Annotated[str, BeforeValidator(_scalar_to_str), _cron("day")]
Month = Annotated[str, BeforeValidator(_scalar_to_str), _cron("month")]
Weekday = Annotated[str, BeforeValidator(_scalar_to_str), _cron("weekday")]

CronName = Annotated[
    str,
    _check(
        r"[a-z0-9][a-z0-9_-]*",
        "cron job name",
        "lowercase, digits, '-', '_' (cron ignores /etc/cron.d files with dots)",
    ),
]
CronTime = Literal["reboot", "hourly", "daily", "weekly", "monthly", "yearly", "annually", "midnight"]

# --- models --------------------------------------------------------------------------------------

STRICT = ConfigDict(extra="forbid")


class Base(BaseModel):
    """The Debian base system that mmdebstrap creates."""

    model_config = STRICT
    distro: Literal["debian"] = Field("debian", description="Distribution (only debian).")
    suite: Annotated[str, _check(r"[a-z]+", "suite")] = Field("bookworm", description="Debian suite.")
    variant: Literal["minbase", "required", "apt", "essential", "important", "standard"] = Field(
        "minbase", description="mmdebstrap variant: which priority set of packages to start from."
    )
    architecture: Annotated[str, _check(r"[a-z0-9]+", "architecture")] = Field(
        "amd64", description="Debian architecture."
    )
    components: list[Annotated[str, _check(r"[a-z0-9][a-z0-9-]*", "archive component")]] = Field(
        default_factory=lambda: ["main"], description="Archive components (main, contrib, non-free ...)."
    )


class User(BaseModel):
    """A login/service account created in the image."""

    model_config = STRICT
    name: UserName = Field(description="User name.")
    uid: Annotated[StrictInt, Field(ge=1000, le=59999)] | None = Field(
        None, description="Fixed uid (1000-59999); allocated when omitted."
    )
    shell: AbsPath = Field("/bin/bash", description="Login shell (absolute path).")
    home: AbsPath | None = Field(None, description="Home directory (absolute); /home/<name> when omitted.")
    groups: list[UserName] = Field(default_factory=list, description="Supplementary groups.")
    sudo: list[Annotated[str, AfterValidator(_sudo_entry)]] = Field(
        default_factory=list, description="Commands the user may run as root (absolute path plus arguments)."
    )


class FileEntry(BaseModel):
    """A file or directory put into the image, copied (src) or rendered (template)."""

    model_config = STRICT
    src: Line | None = Field(None, description="File or directory to copy, relative to the recipe file.")
    template: Line | None = Field(None, description="Jinja2 template to render, relative to the recipe file.")
    dest: Annotated[str, AfterValidator(_dest)] = Field(description="Absolute destination path in the image.")
    mode: Annotated[str | None, BeforeValidator(_mode)] = Field(
        None, description='Octal permission string, e.g. "0644" (quote it).'
    )
    owner: UserName = Field("root", description="Owning user.")
    group: UserName | None = Field(None, description="Owning group; the owner's group when omitted.")

    @model_validator(mode="after")
    def _one_source(self) -> FileEntry:
        if (self.src is None) == (self.template is None):
            fail("give exactly one of 'src' or 'template'")
        return self


class CronJob(BaseModel):
    """A cron job written to /etc/cron.d (the options of chef's cron resource)."""

    model_config = STRICT
    name: CronName = Field(description="Job name, used as the /etc/cron.d file name.")
    command: Line = Field(description="Command line to run.")
    user: UserName = Field("root", description="User the command runs as.")
    minute: Minute = Field("*", description="Minute field (0-59).")
    hour: Hour = Field("*", description="Hour field (0-23).")
    day: Day = Field("*", description="Day of month field (1-31).")
    month: Month = Field("*", description="Month field (1-12 or jan..dec).")
    weekday: Weekday = Field("*", description="Day of week field (0-7 or sun..sat; 0 and 7 are Sunday).")
    time: CronTime | None = Field(None, description="Predefined schedule (@daily ...) instead of the fields.")
    mailto: Line | None = Field(None, description="MAILTO for the job's output.")
    path: Line | None = Field(None, description="PATH for the job.")
    shell: AbsPath | None = Field(None, description="SHELL for the job.")
    home: AbsPath | None = Field(None, description="HOME for the job.")
    environment: dict[EnvKey, EnvValue] = Field(default_factory=dict, description="Extra environment lines.")

    @model_validator(mode="after")
    def _time_or_fields(self) -> CronJob:
        fields = (self.minute, self.hour, self.day, self.month, self.weekday)
        if self.time is not None and any(f != "*" for f in fields):
            fail("'time' cannot be combined with minute/hour/day/month/weekday")
        return self


class App(BaseModel):
    """The application layer: a long-running command behind a health check."""

    model_config = STRICT
    command: Annotated[Line, Field(min_length=1)] = Field(description="Command that starts the app.")
    user: UserName = Field("app", description="Declared user the app runs as (not root).")
    port: Annotated[StrictInt, Field(ge=1, le=65535)] = Field(description="TCP port the app listens on.")
    health: Annotated[str, AfterValidator(_url_path)] = Field(
        "/healthz", description="HTTP path that answers 200 when the app is healthy."
    )
    workdir: AbsPath | None = Field(None, description="Working directory (absolute).")
    static: list[AbsGlob] = Field(default_factory=list, description="Absolute globs of static files.")
    migrations: list[AbsGlob] = Field(default_factory=list, description="Absolute globs of migration files.")
    migrate: Line | None = Field(None, description="Command that applies migrations.")
    smoke: Line | None = Field(None, description="Command that smoke-tests a running app.")


class Recipe(BaseModel):
    """A recipe: how to build one OS image."""

    model_config = STRICT
    name: RecipeName = Field(description="Recipe name (lowercase, digits, '-').")
    extends: Annotated[str, AfterValidator(_extends)] | None = Field(
        None, description="Parent recipe: a name in the same directory or a relative path ending .yaml."
    )
    description: str = Field("", description="Free text shown in listings.")
    base: Base = Field(default_factory=Base, description="The Debian base system.")
    packages: list[PackageName] = Field(default_factory=list, description="Debian packages to install.")
    users: list[User] = Field(default_factory=list, description="Accounts to create.")
    keys: dict[UserName, list[str]] = Field(
        default_factory=dict, description="SSH public keys per user: .pub paths (relative) or key lines."
    )
    files: list[FileEntry] = Field(default_factory=list, description="Files to copy or render.")
    cron: list[CronJob] = Field(default_factory=list, description="Cron jobs.")
    services: list[Annotated[str, AfterValidator(_unit)]] = Field(
        default_factory=list, description="systemd units to enable ('.service' added when no suffix)."
    )
    run: list[str] = Field(default_factory=list, description="Shell commands run at build time, in order.")
    run_network: bool = Field(
        False, description="Give `run:` commands the host's network (default: none, not even loopback)."
    )
    env: dict[EnvKey, EnvValue] = Field(default_factory=dict, description="Environment of the app and run.")
    vars: dict[Annotated[str, AfterValidator(_var_name)], Any] = Field(
        default_factory=dict, description="Extra template variables."
    )
    app: App | None = Field(None, description="The application layer, if any.")

    @model_validator(mode="after")
    def _dedup_packages(self) -> Recipe:
        self.packages = list(dict.fromkeys(self.packages))
        return self
