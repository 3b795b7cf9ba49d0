"""Console markup without importing rich: escaping for rich, stripping for plain output.

Output that goes to a pipe or a file gets no colours; skipping rich there keeps
commands like `sandbox up` fast when scripts call them.
"""

from __future__ import annotations

import re

_TAG = re.compile(
    r"(?<!\\)\[(/?(?:bold|dim|green|red|yellow|cyan|blue|magenta|italic|link(?:=[^\]]*)?|"
    r"bold red|bold green)?)\]"
)


def escape(text: str) -> str:
    """Make `text` print literally inside rich markup."""
    return text.replace("[", "\\[")


def strip(text: str) -> str:
    """Plain text from markup: tags removed, escaped brackets restored."""
    return _TAG.sub("", text).replace("\\[", "[")
