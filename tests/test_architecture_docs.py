"""docs/architecture.md's stage table is the declarations' own (``randsae stages --markdown``)."""

from __future__ import annotations

from pathlib import Path

from randsae.cli import stages_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def test_stage_table_matches_the_declarations():
    text = DOC.read_text()
    begin, end = "<!-- stages:begin -->\n", "\n<!-- stages:end -->"
    table = text[text.index(begin) + len(begin) : text.index(end)]
    assert table == stages_markdown(), "run `randsae stages --markdown` and paste it into docs/architecture.md"
