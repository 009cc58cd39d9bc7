"""``gamepipeline.terminal``: what a terminal may be shown of text from outside."""

from __future__ import annotations

import pytest

from gamepipeline.terminal import printable, strip_ansi


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("esc\x1b[2J\x1b[31mRED\x1b[0m", "escRED"),  # CSI: clear, colours
        ("\x1b[?25lhidden cursor\x1b[?25h", "hidden cursor"),  # private CSI
        ("s\x1b]0;title\x07", "s"),  # OSC ended by BEL
        ("a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\b", "alinkb"),  # OSC ended by ST
        ("a\x1bPq#0;1;2\x1b\\b", "ab"),  # DCS (sixel)
        ("a\x1bcb\x1b(Bc", "abc"),  # reset, charset
        ("a\x9b31mb", "ab"),  # one-byte CSI
        ("plain [text] stays", "plain [text] stays"),
    ],
)
def test_strip_ansi_drops_every_kind_of_escape_sequence(raw: str, clean: str) -> None:
    assert strip_ansi(raw) == clean


def test_printable_shows_the_control_characters_left_and_keeps_brackets() -> None:
    assert printable("bell\x07 tab\tnl\nbidi\u202eend") == (
        "bell\\x07 tab\\x09nl\\x0abidi\\u202eend"
    )
    assert printable("a\x1b[31m[red]\x00\x7f\x85") == "a[red]\\x00\\x7f\\x85"
    assert printable("Game [eu] start [[gpu]] [/]") == "Game [eu] start [[gpu]] [/]"


def test_printable_lines_keeps_line_breaks_and_tabs() -> None:
    assert printable("one\r\ntwo\tx\rthree\x07\n", lines=True) == (
        "one\ntwo\tx\\x0dthree\\x07\n"
    )
