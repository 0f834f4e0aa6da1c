"""README's generated sections agree with the code: the package layout and the report schema."""

import importlib.util
from pathlib import Path

from tests.readme_schema import mismatches, parse, readme_schema

ROOT = Path(__file__).resolve().parents[1]


def _layout_module():
    spec = importlib.util.spec_from_file_location("layout", ROOT / "docs" / "layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_layout_is_the_package():
    layout = _layout_module()
    block = layout.readme_block((ROOT / "README.md").read_text())
    assert block == layout.layout(), "README Layout is stale: run python docs/layout.py --write"


def test_every_module_has_a_summary_line():
    layout = _layout_module()
    missing = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "zerop_deploy").rglob("*.py")
        if not layout._summary(p)
    ]
    assert missing == []


def test_schema_parser_reads_nesting_lists_and_optional_keys():
    schema = parse("a, b {c, d? {e}}, f [{g, ...}], h?")
    assert set(schema) == {"a", "b", "f", "h"} and schema["h"][0] and not schema["a"][0]
    assert set(schema["b"][1]) == {"c", "d"} and schema["b"][1]["d"][0]
    doc = {"a": 1, "b": {"c": 2, "d": {"e": 3}}, "f": [{"g": 1, "x": 2}]}
    assert mismatches(doc, schema) == []
    assert mismatches({"a": 1, "b": {"c": 1, "z": 0}, "f": []}, schema) == [
        "report.b.z: in the report, not in README"
    ]
    missing = mismatches({"b": {"c": 1}, "f": []}, schema)
    assert missing == ["report.a: in README, not in the report"]


def test_readme_schema_block_parses():
    schema = readme_schema()
    assert {"input", "output", "validation", "layers", "target", "preflight"} <= set(schema)
