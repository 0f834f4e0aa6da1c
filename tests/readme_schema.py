"""README's report-schema block, parsed, and checked against a real report (used by the tests)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _items(text: str):
    """Split ``a, b {c, d}, e [{f}]`` at top-level commas."""
    depth, start = 0, 0
    for i, ch in enumerate(text):
        depth += ch in "{[" and 1 or (-1 if ch in "}]" else 0)
        if ch == "," and depth == 0:
            yield text[start:i].strip()
            start = i + 1
    if text[start:].strip():
        yield text[start:].strip()


def parse(text: str) -> dict:
    """``name {sub, ...}`` -> {name: (optional, children or None)}; a list is read as its rows."""
    out = {}
    for item in _items(text):
        if item == "...":
            out["..."] = (True, None)
            continue
        m = re.fullmatch(r"([\w ]+?)(\?)?\s*(\[\{(.*)\}\]|\{(.*)\})?", item, re.S)
        assert m, f"README report schema: cannot read {item!r}"
        inner = m.group(4) if m.group(4) is not None else m.group(5)
        out[m.group(1).strip()] = (bool(m.group(2)), None if inner is None else parse(inner))
    return out


def readme_schema() -> dict:
    text = README.read_text()
    block = text.split("<!-- report-schema:begin -->", 1)[1].split("<!-- report-schema:end -->")[0]
    names = re.findall(r"`([^`]+)`", block)
    return parse(", ".join(names))


def mismatches(doc, schema, where="report") -> list[str]:
    """Keys the document has that README does not list, and listed keys it lacks."""
    if isinstance(doc, list):
        return [m for row in doc[:3] for m in mismatches(row, schema, f"{where}[]")]
    if not isinstance(doc, dict):
        return [f"{where}: README lists keys, the report has {type(doc).__name__}"]
    found = []
    open_ = "..." in schema
    for key in doc:
        if key not in schema and not open_:
            found.append(f"{where}.{key}: in the report, not in README")
    for key, (optional, children) in ((k, v) for k, v in schema.items() if k != "..."):
        if key not in doc:
            if not optional:
                found.append(f"{where}.{key}: in README, not in the report")
        elif children is not None:
            found += mismatches(doc[key], children, f"{where}.{key}")
    return found
