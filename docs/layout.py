"""README's "Layout" section, generated from the package: each module's first docstring line.

    python docs/layout.py           # print the section
    python docs/layout.py --write   # replace it in README.md (between the layout markers)

``tests/test_readme.py`` fails when README.md and the package disagree.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- layout:begin -->", "<!-- layout:end -->"
WIDTH = 28
OTHER = [
    ("kernels/", "C++ int4 kernels: core/ (no Python), bindings/, bench/"),
    ("benchmarks/", "reproducible experiments that write BENCHMARKS.md; results/ holds their data"),
    ("docs/", "architecture.md (stages and imports), experiments.md (findings), layout.py"),
    ("examples/", "quantize from Python, choose proxy data among folders, a release gate (tested)"),
    ("tests/", "mirrors the package; tests/e2e/ runs whole pipelines"),
]


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _line(indent: int, name: str, text: str) -> str:
    head = " " * indent + name
    return f"{head:<{WIDTH}}{text}".rstrip() if len(head) < WIDTH else f"{head}  {text}".rstrip()


def _walk(folder: Path, indent: int) -> list[str]:
    lines = []
    for path in sorted(folder.iterdir(), key=lambda p: (p.is_dir(), p.name)):
        if path.name.startswith(("__pycache__", ".")):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            lines.append(_line(indent, path.name + "/", _summary(path / "__init__.py")))
            lines += _walk(path, indent + 2)
        elif path.suffix == ".py" and path.name != "__init__.py":
            lines.append(_line(indent, path.name, _summary(path)))
    return lines


def layout() -> str:
    """The Layout block: the package tree with each module's first docstring line."""
    lines = [_line(0, "zerop_deploy/", _summary(ROOT / "zerop_deploy" / "__init__.py"))]
    lines += _walk(ROOT / "zerop_deploy", 2)
    lines += [_line(0, name, text) for name, text in OTHER]
    return "```\n" + "\n".join(lines) + "\n```"


def readme_block(text: str) -> str:
    """The text between the layout markers of README.md."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main() -> None:
    """Print the section, or write it into README.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    block = layout()
    if not parser.parse_args().write:
        print(block)
        return
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    readme.write_text(f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
