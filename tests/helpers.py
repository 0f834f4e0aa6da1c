"""Shared test helpers: build tiny ONNX models and compare onnxruntime with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zerop_deploy.demo import onnx_bytes

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared; the caller skips when it does not exist."""
    return SHARED.joinpath(*parts)


def one_node_model(
    op: str,
    inputs: dict[str, tuple[int, ...]],
    output_shape: tuple[int, ...] | None,
    *,
    opset: int,
    initializers: dict[str, np.ndarray] | None = None,
    attrs: dict | None = None,
    node_inputs: list[str] | None = None,
) -> onnx.ModelProto:
    """A model with one node ``op`` reading float inputs (and constant initializers)."""
    initializers = initializers or {}
    node = helper.make_node(
        op,
        node_inputs or [*inputs, *initializers],
        ["y"],
        name=f"{op.lower()}_node",
        **(attrs or {}),
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(v, n) for n, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 9 if opset < 21 else 10
    if output_shape is None:  # let ONNX infer the output's type and shape
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        y = [v for v in inferred.graph.value_info if v.name == "y"] or list(inferred.graph.output)
        model.graph.output[0].CopyFrom(y[0])
    onnx.checker.check_model(model)
    return model


def assert_ort_matches_torch(model: onnx.ModelProto, *, seed: int = 0, atol: float = 1e-5) -> float:
    """Convert with zerop_deploy and check every output against onnxruntime on random inputs."""
    from zerop_deploy.load.parity import check_parity
    from zerop_deploy.load.to_torch import convert_model

    module = convert_model(model)
    parity = check_parity(model, module, seed=seed)
    assert parity.max_abs_diff <= atol * max(1.0, parity.output_scale), parity
    return parity.max_abs_diff


def small_cnn(*, keep_bn: bool = True, opset: int = 17, seed: int = 0):
    """A tiny conv net with BatchNorm, exported by the TorchScript exporter (a ModelProto)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return onnx.load_from_string(
        onnx_bytes(net.eval(), (1, 3, 16, 16), keep_bn=keep_bn, opset=opset)
    )


def with_external_data(folder: Path, location: str) -> tuple[Path, bytes]:
    """``folder/model/ext.onnx``: a MatMul whose weight points to external data at ``location``.

    Returns the model's path and the weight bytes the external file should hold (nothing is
    written at ``location``).
    """
    w = np.arange(64, dtype=np.float32).reshape(8, 8)
    model = one_node_model("MatMul", {"x": (2, 8)}, (2, 8), opset=17, initializers={"w": w})
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(w.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    path = folder / "model" / "ext.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(model, str(path))
    return path, w.tobytes()


def log_of_one_minus_input_model() -> onnx.ModelProto:
    """Finite weights and finite on inputs in [0, 1), but -inf on a white pixel (x = 1).

    ``Sub(1, x) -> Log -> Conv -> GlobalAveragePool -> Flatten -> Gemm``, nodes ``sub_a``,
    ``log_b``, ``conv_c``, ``gap``, ``flat``, ``fc``; input ``x`` 1 x 3 x 16 x 16. Random inputs
    (the load parity check) stay finite; real images with a 255 pixel do not.
    """
    rng = np.random.default_rng(0)
    inits = {
        "one": np.ones(1, np.float32),
        "w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "fc_w": rng.normal(size=(4, 4)).astype(np.float32),
        "fc_b": np.zeros(4, np.float32),
    }
    nodes = [
        helper.make_node("Sub", ["one", "x"], ["a"], name="sub_a"),
        helper.make_node("Log", ["a"], ["b"], name="log_b"),
        helper.make_node("Conv", ["b", "w"], ["c"], name="conv_c", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(v, n) for n, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
