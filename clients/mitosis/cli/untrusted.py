"""Making untrusted text (task text, model output, tool output) safe to print on a terminal."""

from __future__ import annotations

import re

# Escape sequences are removed whole, so no half of one (e.g. "[2J") is left behind.
_ESCAPE_SEQUENCE = re.compile(
    r"""
    \x1b\[[0-?]*[ -/]*[@-~]                 # CSI: cursor moves, colours, erase
    | \x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?  # OSC, DCS, SOS, PM, APC: titles, hyperlinks
    | \x1b[ -/]*[0-~]                       # other two-byte and nF escapes
    """,
    re.VERBOSE,
)
# C0 controls except tab and newline, DEL, C1 controls, and bidirectional overrides.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """Return text without terminal escape sequences or control characters (keeps \\n, \\t)."""
    text = text.replace("\r\n", "\n")
    return _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", text))


def clean_line(text: str) -> str:
    """Return cleaned text on one line: line breaks and tabs become spaces."""
    return clean(text).replace("\n", " ").replace("\t", " ")
