"""The guard on every command line built from recipe, lock or image data.

No element built from data may start with `-` (a tool would read it as an option, e.g. a lock whose
suite is `--setup-hook=...` turning into an mmdebstrap hook), carry a control character, or be
empty; builders also put `--` before the operands where the tool supports it. The values are
checked at their source too (the recipe and lock schemas); this is the last line.
"""

from __future__ import annotations

import re

from sandbox.errors import BuildError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_arg(value: object, what: str) -> str:
    """`value` as a command-line operand; BuildError if a tool could take it for an option."""
    if not isinstance(value, str) or not value or value.startswith("-") or _CONTROL.search(value):
        raise BuildError(
            f"{what} {value!r} cannot be passed to a command",
            hint="it would be read as an option (leading '-'), or it is empty or has control characters; "
            "check the recipe and its lock file",
        )
    return value


def safe_args(values: list[str], what: str) -> list[str]:
    return [safe_arg(v, what) for v in values]
