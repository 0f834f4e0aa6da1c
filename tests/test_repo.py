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
# layers below it, never one above. Inside the stages, a stage may import the stages before it in
# the data flow (STAGES order), never a later one. A module is placed by its longest listed prefix;
# every module of the package must be placed.
LAYERS = (
    ("commands", {"cli", "demo", "__main__"}),
    ("api", {"api"}),
    ("stages", set()),  # STAGES, below
    ("engine", {"quant"}),
    ("leaves", {"errors", "config", "data.preprocess", "io", "progress", "onnx_facts", "__init__",
                "__version__", "_kernels", "native_tensors"}),  # fmt: skip
)
STAGES = ("kernels", "plots", "load", "data", "proxy", "synth", "export", "validate", "bench")
"""The stages in the order data flows through them (each may import the ones before it)."""


def _place(module: str) -> tuple[int, int]:
    """(layer rank, stage rank) of ``zerop_deploy.X.Y``; stage rank is 0 outside the stages."""
    parts = module.split(".")[1:] or ["__init__"]
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        for rank, (_name, members) in enumerate(LAYERS):
            if key in members:
                return rank, 0
        if n == 1 and key in STAGES:
            return 2, STAGES.index(key)
    raise AssertionError(f"{module}: place it in LAYERS or STAGES (docs/architecture.md)")


def _layer(module: str) -> int:
    return _place(module)[0]


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


def _modules():
    for path in sorted((ROOT / "zerop_deploy").rglob("*.py")):
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts), path


def test_imports_flow_one_way():
    """commands -> api -> stages -> engine (quant/) -> leaves; nothing imports a layer above it."""
    upward = []
    for module, path in _modules():
        rank = _layer(module)
        for imported in sorted(_imports(path)):
            if _layer(imported) < rank:
                upward.append(f"{module} ({LAYERS[rank][0]}) imports {imported} "
                              f"({LAYERS[_layer(imported)][0]})")  # fmt: skip
    assert upward == []


def test_stages_import_only_earlier_stages():
    """load -> data -> proxy -> synth -> export -> validate -> bench: never a later stage."""
    backward = []
    for module, path in _modules():
        layer, stage = _place(module)
        if layer != 2:
            continue
        for imported in sorted(_imports(path)):
            other_layer, other_stage = _place(imported)
            if other_layer == 2 and other_stage > stage:
                backward.append(f"{module} ({STAGES[stage]}) imports {imported} "
                                f"({STAGES[other_stage]}, a later stage)")  # fmt: skip
    assert backward == []


def test_the_command_line_calls_only_the_api():
    """cli/ reaches the pipeline through zerop_deploy.api alone (plus leaves and the demo)."""
    below = []
    for module, path in _modules():
        if not module.startswith("zerop_deploy.cli"):
            continue
        for imported in sorted(_imports(path)):
            if _layer(imported) in (2, 3):  # a stage or the engine
                below.append(f"{module} imports {imported}")
    assert below == []


def test_package_layout_stays_small():
    """At most 12 top-level modules (stages live in packages) and no file over 400 lines."""
    top = sorted(p.name for p in (ROOT / "zerop_deploy").glob("*.py"))
    assert len(top) <= 12, top
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for _m, path in _modules()
        if (n := len(path.read_text().splitlines())) > 400
    ]
    assert long == []
