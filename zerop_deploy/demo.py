"""The embedded default: a small real CNN with BatchNorm that the package builds itself.

``zerop-deploy demo`` needs no user data. For now it builds the demo network, exports it to ONNX
the two
ways users do (BatchNorm kept, and BatchNorm folded by the default constant folding) and inspects
both;
the quantization stages will extend it to a full int4 run.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from zerop_deploy.fileio import atomic_write_bytes

DEMO_INPUT_SHAPE = (1, 3, 32, 32)


def build_demo_network(seed: int = 0):  # -> torch.nn.Module
    """A ResNet-style CIFAR-sized CNN with BatchNorm, ReLU, a residual Add and a linear head.

    Args:
        seed: Seed of the weight initialisation and of the BN statistics.

    Returns:
        The network in eval mode, with non-trivial BatchNorm running statistics.
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(x + self.bn2(self.conv2(y)))

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Block(16),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        Block(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def onnx_bytes(
    net, input_shape: tuple[int, ...] = DEMO_INPUT_SHAPE, *, keep_bn: bool, opset: int = 17
) -> bytes:
    """Serialise ``net`` with the TorchScript exporter, BatchNorm kept or folded.

    The graph has input ``input`` and output ``logits`` with a dynamic batch dimension.

    Keeping BatchNorm (``training=TrainingMode.PRESERVE, do_constant_folding=False``) preserves the
    BN statistics that proxy-data selection and synthesis need; the default export folds them away.
    """
    import torch

    kwargs = (
        {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
        if keep_bn
        else {}
    )
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.rand(*input_shape),),
            buf,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=opset,
            dynamo=False,
            **kwargs,
        )
    return buf.getvalue()


def export_onnx(net, path: str | os.PathLike[str], *, keep_bn: bool, opset: int = 17) -> Path:
    """Write :func:`onnx_bytes` of ``net`` to ``path`` atomically."""
    return atomic_write_bytes(path, onnx_bytes(net, keep_bn=keep_bn, opset=opset))


def write_demo_models(out_dir: str | os.PathLike[str], seed: int = 0) -> tuple[Path, Path]:
    """Build the demo network and write ``demo_cnn.onnx`` (BN kept) and ``demo_cnn_folded.onnx``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = build_demo_network(seed)
    kept = export_onnx(net, out / "demo_cnn.onnx", keep_bn=True)
    folded = export_onnx(net, out / "demo_cnn_folded.onnx", keep_bn=False)
    return kept, folded
