"""The repository keeps its promises: README's test command is what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n\s*(.+?)\n\s*```", text)


def test_ci_runs_the_readme_test_command_verbatim():
    commands = _readme_commands()
    assert len(commands) >= 2
    test_cmd = commands[1].strip()
    assert "pytest" in test_cmd
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_readme_first_command_runs_the_demo():
    assert _readme_commands()[0].strip().endswith("zerop-deploy demo")


# The layers of docs/architecture.md, top to bottom: a module may import its own layer and the
# layers below it, never one above. Every module of the package must be placed here.
LAYERS = (
    ("commands", {"cli", "cli_quantize", "_cli_util", "demo", "__main__"}),
    ("api", {"api", "_proxy", "_synthetic", "_preflight", "_finetune", "_report"}),
    ("stages", {
        "load", "convert", "summary", "data", "stats", "synth", "export", "_export_checks",
        "_onnx_graph", "validate", "bench", "kernels", "_kernels", "plots", "batches", "_arrays",
        "_builtin_pool", "_graph_order", "_tensor_checks", "deploy",
    }),  # fmt: skip
    ("engine", {"quant"}),
    ("leaves", {"errors", "config", "preprocess", "fileio", "_progress", "onnx_facts", "__init__",
                "_allocator",
                "__version__"}),  # fmt: skip
)


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for rank, (_name, members) in enumerate(LAYERS):
        if top in members:
            return rank
    raise AssertionError(f"{module}: place it in a layer of LAYERS (docs/architecture.md)")


def _imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):  # function-local imports included
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zerop_deploy"):
            if node.module == "zerop_deploy":
                found.update(f"zerop_deploy.{a.name}" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("zerop_deploy"))
    return found


def test_imports_flow_one_way():
    """commands -> api -> stages -> engine (quant/) -> leaves; nothing imports a layer above it."""
    upward = []
    for path in sorted((ROOT / "zerop_deploy").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        rank = _layer(module)
        for imported in sorted(_imports(path)):
            if _layer(imported) < rank:
                upward.append(f"{module} ({LAYERS[rank][0]}) imports {imported} "
                              f"({LAYERS[_layer(imported)][0]})")  # fmt: skip
    assert upward == []
