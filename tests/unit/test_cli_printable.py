"""The CLI never sends a terminal control sequence it received from the server: a display name (an SSO "name"
claim), a comment or a feature description holding ``\\x1b[2K\\x1b[1G`` would erase and overwrite what the auditor's
terminal shows (e.g. the actor column of ``progression audit``)."""

from __future__ import annotations

import io

from rich.console import Console

from client.cli.render import add_row, columns, printable

HOSTILE = "mallory\x1b[2K\x1b[1Gvera \x9b31m"


def test_a_table_cell_shows_control_characters_as_escapes() -> None:
    table = columns("actor", "summary")
    add_row(table, HOSTILE, "ok\tfine")
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=200, highlight=False).print(table)
    text = buf.getvalue()
    assert "\x1b[2K" not in text and "\x9b" not in text
    assert "mallory\\x1b[2K\\x1b[1Gvera \\x9b31m" in text


def test_printable_keeps_text_tabs_and_newlines() -> None:
    assert printable("Vera Schäfer 同意\tl'AUC\nok") == "Vera Schäfer 同意\tl'AUC\nok"
    assert printable("\x00\x07\x7f") == "\\x00\\x07\\x7f"

