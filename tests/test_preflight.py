"""quantize's preflight: an export that cannot work is refused before any fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from zerop_deploy.cli.main import main
from zerop_deploy.config import QuantConfig


def _export(module: nn.Module, path) -> None:
    torch.onnx.export(
        module.eval(), torch.rand(1, 3, 16, 16), str(path), input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "n"}}, opset_version=17, dynamo=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A ReLU6 network (Clip 0..6, like MobileNets) and a Hardtanh(-0.5, 1.5) one."""
    d = tmp_path_factory.mktemp("preflight")
    torch.manual_seed(0)
    for name, act in (("relu6", nn.ReLU6), ("hardtanh", lambda: nn.Hardtanh(-0.5, 1.5))):
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act(), nn.Conv2d(8, 8, 1), act(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        )  # fmt: skip
        _export(net, d / f"{name}.onnx")
    images = np.random.default_rng(0).integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    np.savez(d / "proxy.npz", images=images)
    return d


def test_preflight_loads_the_calibrated_export_and_reports_it(models):
    from zerop_deploy.api.preflight import preflight, preflight_images
    from zerop_deploy.load.to_torch import load_model

    loaded = load_model(models / "relu6.onnx")
    quant = QuantConfig(wbits=4, abits=4, first_last_bits=4)
    doc = preflight(loaded.module, loaded.proto, quant, preflight_images((3, 16, 16), 0), "m")
    assert doc["quantized_layers"] == 3 and doc["images"] == 4
    assert doc["ort_vs_student_max_abs_logit_diff"] < 1e-3


def test_export_problem_is_refused_before_fine_tuning(models, monkeypatch):
    """Asymmetric 4-bit activations after a Clip: onnxruntime cannot load that; exit 2 at once."""
    import zerop_deploy.api.finetune as finetune

    def no_training(*_a, **_k):
        raise AssertionError("fine-tuning started although the export cannot work")

    monkeypatch.setattr(finetune, "run_training", no_training)
    out = models / "h.int4.onnx"
    res = CliRunner().invoke(main, [
        "quantize", str(models / "hardtanh.onnx"), "--bits", "4", "--first-last-bits", "4",
        "--asymmetric-activations", "--proxy", str(models / "proxy.npz"), "-o", str(out),
    ])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "before fine-tuning" in res.output and "from Clip" in res.output
    assert "--asymmetric-activations" in res.output and "Traceback" not in res.output
    assert not out.exists() and not list(models.glob("h.int4.onnx*"))


def test_relu6_network_at_all_4_bits_exports_a_file_onnxruntime_loads(models, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "r.int4.onnx"
    res = CliRunner().invoke(main, [
        "quantize", str(models / "relu6.onnx"), "--bits", "4", "--first-last-bits", "4",
        "--proxy", str(models / "proxy.npz"), "--steps", "2", "-o", str(out), "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r.int4.report.json").read_text())
    assert doc["preflight"]["quantized_layers"] == 3
    assert doc["float_nodes"] == []  # every compute node of this network is quantized
    assert set(doc["quantization_scheme"]) == {"weights", "activations", "bias", "other ops"}
    assert doc["validation"]["ort_vs_student_top1_agreement"] == 1.0
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # default options
    assert onnx.load(str(out)).graph.node
