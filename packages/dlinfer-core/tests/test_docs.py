"""The op table in the README is generated from the spec and must not drift from it."""

from pathlib import Path

from dlinfer.docs import BEGIN, END, render


def test_readme_op_table_matches_spec() -> None:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == render(), "README op table is stale: regenerate it with `python -m dlinfer.docs`"
