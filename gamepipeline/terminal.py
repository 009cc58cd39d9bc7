"""Text from outside (a container's output, a template's names, a node's labels) made
safe to show on a terminal.

``strip_ansi`` drops terminal escape sequences: the agent cleans a step's output with
it before the output leaves the node, and the CLI cleans every string the server gives
it the same way before printing. ``printable`` then makes every control character that
is left visible as an escape (``\\x07``, ``\\u202e``), so nothing from a pipeline can
move the cursor, clear the screen, recolour the terminal or set its title.
"""

from __future__ import annotations

import re
from typing import Final

# CSI (ESC [ or the one-byte 0x9b, parameters, intermediates, a final byte), OSC
# (ESC ] or 0x9d, up to BEL or ST; unterminated, to the end), the other string
# sequences (DCS, SOS, PM, APC, up to ST), and the two-character escapes.
_ANSI: Final = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"
)
# C0 and C1 controls, DEL, and the bidirectional overrides and isolates, which
# reorder what follows them on the line.
_CONTROL: Final = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_CONTROL_BUT_LINES: Final = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves, titles)."""
    return _ANSI.sub("", text)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` as a terminal may show it: escape sequences dropped, every other
    control character written as its escape (``\\x07``). With ``lines``, line breaks
    and tabs stay (a message, an output); ``\\r\\n`` counts as a line break."""
    text = strip_ansi(text)
    if lines:
        return _CONTROL_BUT_LINES.sub(_visible, text.replace("\r\n", "\n"))
    return _CONTROL.sub(_visible, text)
