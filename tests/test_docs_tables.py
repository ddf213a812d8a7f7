"""Published tables are rendered from committed JSON: a number edited by hand in the docs fails here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "scripts" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_table_in_the_docs_equals_its_render():
    stale = _module().update(check=True)
    assert not stale, f"tables differ from their JSON (run `make docs-tables`): {stale}"


def test_every_renderer_has_a_block_and_its_json():
    docs = _module()
    found = docs.blocks()
    for name in docs.TABLES:
        assert found[name], f"no markdown file holds the block of table {name!r}"
        for source in docs.sources(name):
            assert json.loads((ROOT / source).read_text(encoding="utf-8")), source


@pytest.mark.parametrize("index", range(len(_module().TABLES)))
def test_a_hand_edited_number_is_caught(tmp_path, monkeypatch, index):
    """One digit changed inside one table's block (in a copy of its document) is reported, naming only
    that block."""
    docs = _module()
    name = list(docs.TABLES)[index]
    path = docs.blocks()[name][0]
    text = path.read_text(encoding="utf-8")
    start = text.index(f"<!-- table:{name} -->") + len(f"<!-- table:{name} -->")
    digit = next(i for i in range(start, len(text)) if text[i].isdigit())
    assert digit < text.index(f"<!-- /table:{name} -->"), f"table {name!r} has no digit"
    edited = text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "EDITED.md").write_text(edited, encoding="utf-8")
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    for source in {s for n in docs.TABLES for s in docs.sources(n)}:
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / source).write_text((ROOT / source).read_text(encoding="utf-8"), encoding="utf-8")
    assert docs.update(check=True) == [f"docs/EDITED.md: {name}"]


def test_a_block_without_a_renderer_is_refused(tmp_path, monkeypatch):
    docs = _module()
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "BROKEN.md").write_text(
        "<!-- table:no_such_table -->\nx\n<!-- /table:no_such_table -->\n"
    )
    with pytest.raises(SystemExit, match="no_such_table"):
        docs.blocks()
