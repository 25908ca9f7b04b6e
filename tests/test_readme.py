"""The README's tables are generated from the code; this fails when they drift."""

from __future__ import annotations

from scripts.readme_tables import README, render


def test_readme_tables_match_the_code() -> None:
    text = README.read_text()
    assert "<!-- options:start -->" in text
    assert "<!-- endpoints:start -->" in text
    assert render(text) == text, "README tables are stale: run `make readme`"
