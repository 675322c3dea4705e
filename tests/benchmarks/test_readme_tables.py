"""The README's performance section is what `python -m benchmarks.readme_tables` generates from the committed
result files: a hand edit of a number there (or a result file changed without regenerating) fails here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import readme_tables

ROOT = Path(__file__).resolve().parents[2]


def test_readme_performance_section_equals_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(readme_tables.BEGIN) == 1 and readme.count(readme_tables.END) == 1
    expected = readme_tables.splice(readme, readme_tables.generate())
    assert readme == expected, "README's performance section is stale or hand-edited: run " \
                               "`python -m benchmarks.readme_tables`"
    assert readme_tables.main(["--check"]) == 0


def test_a_hand_edit_is_caught_and_regeneration_restores_it(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    edited = readme.replace("| 1,475 MiB |", "| 1,400 MiB |", 1)
    assert edited != readme, "the fp32 VmHWM cell this test edits is gone from the README"
    copy = tmp_path / "README.md"
    copy.write_text(edited, encoding="utf-8")
    assert readme_tables.main(["--readme", str(copy), "--check"]) == 1
    assert readme_tables.main(["--readme", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == readme


def test_every_table_comes_from_its_result_file(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    base = readme_tables.generate(results)
    # A result file that changes changes the README: the RSS table's peak and the emulated GPU's requests/s.
    doc = json.loads((results / "emulated_gpu" / "results.json").read_text(encoding="utf-8"))
    doc["rows"][0]["rps"] = 12345.6
    doc["rows"][0]["rps_rounds"] = [12345.6]  # merged rounds: the table shows the rounds' median and range
    (results / "emulated_gpu" / "results.json").write_text(json.dumps(doc), encoding="utf-8")
    assert "12,345.6" in readme_tables.generate(results) and "12,345.6" not in base
    # A benchmark without results has no table; a generic section appears once its table file exists.
    shutil.rmtree(results / "oip")
    assert "Front ends" in base and "Front ends" not in readme_tables.generate(results)
    (results / "lean_path").mkdir(exist_ok=True)
    (results / "lean_path" / "readme_table.json").write_text(json.dumps(
        {"title": "Null model vs echo", "text": "cmd, flags, load", "header": ["a", "b"],
         "rows": [["1", "2"]]}))
    assert "**Null model vs echo**\n\ncmd, flags, load\n\n| a | b |\n|---|---|\n| 1 | 2 |" in \
        readme_tables.generate(results)


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="markers"):
        readme_tables.splice("# no section here\n", "body")
