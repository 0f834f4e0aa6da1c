"""Deployment targets: the ort-cpu file (exact weights, onnxruntime integer kernels), retarget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from torch import nn

from zerop_deploy.cli.main import main
from zerop_deploy.export.targets.float_view import ActGrid
from zerop_deploy.export.targets.ort_cpu import FINER, act_grid_8bit
from zerop_deploy.validate.compare import run_logits


class _Net(nn.Module):
    """Residual Add, explicit zero Pad, ReLU6 and a ShuffleNet channel shuffle (dynamic batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.dw = nn.Conv2d(8, 8, 2, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.clamp(self.dw(self.pad(x)), 0, 6)
        x = x + self.pw(y)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(torch.relu(x).mean((2, 3)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The fp32 model, a proxy set and the exact W4A4 qdq file quantize writes for it."""
    d = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    torch.onnx.export(
        _Net().eval(), torch.rand(1, 3, 16, 16), str(d / "net.onnx"), input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "n"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    np.savez(d / "proxy.npz", images=images)
    res = CliRunner().invoke(main, [
        "quantize", str(d / "net.onnx"), "--bits", "4", "--first-last-bits", "4", "--steps", "2",
        "--proxy", str(d / "proxy.npz"), "-o", str(d / "net.int4.onnx"), "--quiet",
        "--target", "qdq",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    return d


_GRIDS = [(4, False, 0), (4, False, 3), (4, True, 0), (4, True, -2), (8, True, 5), (8, False, 7)]


@pytest.mark.parametrize("bits,signed,zp", _GRIDS)
def test_8bit_grid_saturates_where_the_student_did_and_holds_its_levels(bits, signed, zp):
    grid = ActGrid(scale=0.37, zero_point=zp, bits=bits, signed=signed)
    scale, zp8 = act_grid_8bit(grid)
    assert 0 <= zp8 <= 255
    lo8, hi8 = (0 - zp8) * scale, (255 - zp8) * scale
    assert lo8 == pytest.approx(grid.low, rel=1e-6) and hi8 == pytest.approx(grid.high, rel=1e-6)
    step = FINER if bits == 4 else 1
    qmin = -(1 << (bits - 1)) if signed else 0
    for level in range(qmin, qmin + (1 << bits)):  # every student level is an 8-bit level
        value = (level - zp) * grid.scale
        assert value / scale + zp8 == pytest.approx((level - qmin) * step, abs=1e-6)


def test_shape_arithmetic_folds_to_constants_with_the_same_outputs(files):
    from zerop_deploy.export.targets.shapes import fold_batch_shapes

    model = onnx.load(files / "net.onnx")
    assert any(n.op_type == "Shape" for n in model.graph.node)
    assert fold_batch_shapes(model) > 0
    assert not any(n.op_type == "Shape" for n in model.graph.node)
    for batch in (1, 5):  # -1 in the Reshape targets: any batch size still works
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        assert np.array_equal(run_logits(model, x), run_logits(str(files / "net.onnx"), x))


def test_channel_shuffle_and_zero_pad_rewrites_keep_every_number(files):
    from zerop_deploy.export.targets.rewrites import channel_shuffles_to_gather, pads_into_convs
    from zerop_deploy.export.targets.shapes import fold_batch_shapes

    model = onnx.load(files / "net.onnx")
    fold_batch_shapes(model)
    grid = ActGrid(0.1, 0, 4, False)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    acts = {pad.output[0]: grid}
    assert channel_shuffles_to_gather(model) == 1
    assert pads_into_convs(model, acts) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "Pad" not in ops and "Transpose" not in ops and ops.count("Gather") == 1
    assert acts == {pad.input[0]: grid}  # the grid moved to the Pad's input
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    assert np.array_equal(run_logits(model, x), run_logits(str(files / "net.onnx"), x))


def _weight_levels(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Conv/Gemm node -> (integer weight levels, scales) read through its DequantizeLinear."""
    inits = {t.name: t for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm") and n.input[1] in dq:
            d = dq[n.input[1]]
            out[n.name] = (numpy_helper.to_array(inits[d.input[0]]).astype(np.int32),
                           numpy_helper.to_array(inits[d.input[1]]))  # fmt: skip
    return out


def test_retarget_ort_cpu_keeps_weights_exact_and_runs_on_integer_kernels(files):
    from zerop_deploy.export.targets.ort_kernels import kernel_summary

    out = files / "net.int4.ort-cpu.onnx"
    res = CliRunner().invoke(main, [
        "retarget", str(files / "net.int4.onnx"), "--target", "ort-cpu", "--data",
        str(files / "proxy.npz"), "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["output"] == str(out) and doc["target"]["exact"] is False
    qdq, dep = onnx.load(files / "net.int4.onnx"), onnx.load(out)
    a, b = _weight_levels(qdq), _weight_levels(dep)
    assert set(a) == set(b) and len(a) == 4
    for node, (levels, scales) in a.items():
        assert np.array_equal(levels, b[node][0]) and np.array_equal(scales, b[node][1])
        assert dep_type(dep, node) == onnx.TensorProto.INT8
    kernels = doc["target"]["onnxruntime_kernels"]
    assert kernels["float_compute_nodes"] == [] and kernels["integer_nodes"] >= 4
    assert kernels["ops"].get("QLinearConv", 0) == 3
    exact = kernel_summary(qdq)  # the int4 file: every layer stays a float kernel, and says why
    assert exact["integer_nodes"] == 0 and len(exact["float_compute_nodes"]) == 4
    assert all("4-bit weight" in f["why"] for f in exact["float_compute_nodes"])
    assert 0 <= doc["target"]["vs_qdq"]["top1_agreement"] <= 1
    meta = {p.key: json.loads(p.value) for p in dep.metadata_props}
    assert meta["zerop_deploy.quantization"]["target"] == "ort-cpu"


def dep_type(model: onnx.ModelProto, node: str) -> int:
    inits = {t.name: t for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    conv = next(n for n in model.graph.node if n.name == node)
    return inits[dq[conv.input[1]].input[0]].data_type


@pytest.mark.parametrize("case", ["not ours", "already", "back to qdq"])
def test_retarget_refuses_with_one_line(files, case):
    fp32, qdq = files / "net.onnx", files / "net.int4.onnx"
    dep = files / "again.onnx"
    if case != "not ours":
        CliRunner().invoke(main, ["retarget", str(qdq), "--target", "ort-cpu", "-o", str(dep),
                                  "--data", str(files / "proxy.npz")])  # fmt: skip
    src, target = {"not ours": (fp32, "ort-cpu"), "already": (dep, "ort-cpu"),
                   "back to qdq": (dep, "qdq")}[case]  # fmt: skip
    res = CliRunner().invoke(main, ["retarget", str(src), "--target", target, "-o",
                                    str(files / "never.onnx")])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert str(src) in res.output and "Traceback" not in res.output
    assert not (files / "never.onnx").exists()


def test_quantize_target_ort_cpu_writes_and_reports_it(files, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "n.int4.onnx"
    res = CliRunner().invoke(main, [
        "quantize", str(files / "net.onnx"), "--bits", "4", "--steps", "2", "--target", "ort-cpu",
        "--proxy", str(files / "proxy.npz"), "-o", str(out), "--quiet",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "exact student file" in res.output
    doc = json.loads((tmp_path / "n.int4.report.json").read_text())
    assert doc["preflight"]["target"] == "ort-cpu"
    assert doc["target"]["name"] == "ort-cpu" and doc["target"]["changes"]
    assert doc["target"]["onnxruntime_kernels"]["float_compute_nodes"] == []
    assert doc["target"]["vs_qdq"]["images"] > 0
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # default options


def test_bench_times_the_deployment_file_beside_fp32_at_each_batch(files):
    res = CliRunner().invoke(main, [
        "bench", str(files / "net.onnx"), "--qdq", str(files / "net.int4.onnx"), "--deploy",
        str(files / "net.int4.onnx"), "--batch", "1", "--batch", "4", "--threads", "1", "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["end_to_end"]["by_batch"]
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert r["fp32_ms"] > 0 and r["deploy_ms"] > 0 and r["deploy_speedup"] > 0
        assert r["deploy_speedup"] == pytest.approx(r["fp32_ms"] / r["deploy_ms"], rel=0.05)


@pytest.mark.parametrize("asked", [None, "ort-cpu"])
def test_a_model_ort_cpu_cannot_take_falls_back_to_qdq_only_by_default(files, tmp_path, monkeypatch,
                                                                      asked):
    """The default target never fails a run that qdq can carry; an explicit one fails at once."""
    import zerop_deploy.api.finetune as finetune
    import zerop_deploy.api.preflight as preflight
    import zerop_deploy.api.quantization as quantize
    from zerop_deploy.errors import ExportError

    def refuse(*_a, **_k):
        raise ExportError("onnxruntime's quantizer failed: test")

    monkeypatch.setattr(preflight, "to_target", refuse)
    monkeypatch.setattr(quantize, "to_target", refuse)
    if asked:
        def no_training(*_a, **_k):
            pytest.fail("fine-tuning started")

        monkeypatch.setattr(finetune, "run_training", no_training)
    out = tmp_path / "f.int4.onnx"
    res = CliRunner().invoke(main, [
        "quantize", str(files / "net.onnx"), "--bits", "4", "--steps", "1", "--quiet",
        "--proxy", str(files / "proxy.npz"), "-o", str(out),
        *(["--target", asked] if asked else []),
    ])  # fmt: skip
    if asked:
        assert res.exit_code == 2 and "--target qdq" in res.output and not out.exists()
        return
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "f.int4.report.json").read_text())
    assert "test" in doc["preflight"]["target_fallback"]
    assert doc["target"]["name"] == "qdq" and doc["target"]["exact"] is True
    types = {t.data_type for t in onnx.load(out).graph.initializer}
    assert onnx.TensorProto.INT4 in types


def test_ort_cpu_file_is_the_same_bytes_in_every_process(files):
    """Nothing may depend on Python's per-process hash seed (the folded shapes once did)."""
    import subprocess
    import sys

    code = (
        "import hashlib, sys, numpy as np, onnx\n"
        "from zerop_deploy.export.targets.ort_cpu import to_ort_cpu\n"
        "x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)\n"
        "m = to_ort_cpu(onnx.load(sys.argv[1]), x)\n"
        "print(hashlib.sha256(m.SerializeToString()).hexdigest())\n"
    )
    digests = set()
    for seed in ("1", "2"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, str(files / "net.int4.onnx")],
                             capture_output=True, text=True, env=env, check=True)  # fmt: skip
        digests.add(out.stdout.strip())
    assert len(digests) == 1
