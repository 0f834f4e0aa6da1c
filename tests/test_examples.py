"""Every script in examples/ runs, with short budgets, on a small model and generated data."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["ZEROP_STEPS"] = "3"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture()
def work(tmp_path, cnn_bn):
    onnx.save(cnn_bn, str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "labelled.npz",
        images=rng.integers(0, 256, (40, 16, 16, 3), np.uint8),
        labels=rng.integers(0, 4, 40),
    )
    for name, colour in (("reds", (200, 30, 30)), ("grays", (120, 120, 120))):
        (tmp_path / name).mkdir()
        for i in range(6):
            Image.new("RGB", (20, 20), color=colour).save(tmp_path / name / f"{i}.png")
    return tmp_path


def test_quantize_from_python(work):
    r = _run(
        [sys.executable, EXAMPLES / "quantize_api.py", "m.onnx", "--steps", "3",
         "--eval", "labelled.npz", "--synthetic", "8"],
        work,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "accuracy: fp32" in r.stdout
    assert (work / "m.int4.onnx").is_file() and (work / "m.int4.report.json").is_file()


def test_select_proxy_among_folders(work):
    r = _run(
        [sys.executable, EXAMPLES / "select_proxy.py", "m.onnx", "reds", "grays",
         "--samples", "8", "--plot", "r.png"],
        work,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "1. " in r.stdout and "--proxy" in r.stdout and (work / "r.png").is_file()


def test_release_gate_passes_and_fails(work):
    ok = _run(["bash", EXAMPLES / "release_gate.sh", "m.onnx", "labelled.npz", "0", "100"], work)
    assert ok.returncode == 0, ok.stderr
    assert "gate: passed" in ok.stdout
    bad = _run(["bash", EXAMPLES / "release_gate.sh", "m.onnx", "labelled.npz", "0", "-1"], work)
    assert bad.returncode == 1 and "FAILED" in bad.stderr
    missing = _run(["bash", EXAMPLES / "release_gate.sh", "nope.onnx", "labelled.npz"], work)
    assert missing.returncode == 2 and "nope.onnx" in missing.stderr
