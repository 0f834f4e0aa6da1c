"""The embedded default: a small real CNN, trained here, quantized to 4 bits without its data.

``zerop-deploy demo`` needs nothing but the installed packages. It trains a ResNet-style CNN with
BatchNorm on scikit-learn's handwritten digits (1,797 real 8 x 8 scans shipped inside
scikit-learn, upscaled to 16 x 16; 400 held out by a seeded shuffle), exports it to ONNX the two
ways users do (BatchNorm kept, and folded by the default constant folding), then runs the real
``quantize --bits 4`` with the built-in proxy pool (public photos, none of the digits) and
measures fp32 and int4 accuracy on the held-out digits in onnxruntime.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from zerop_deploy.api import default_report, quantize
from zerop_deploy.config import DataConfig, QuantConfig, RunConfig, TrainConfig
from zerop_deploy.data.batches import augment
from zerop_deploy.data.sources import fit_images
from zerop_deploy.io import atomic_write_bytes

DEMO_INPUT_SHAPE = (1, 1, 16, 16)
DEMO_TEST_IMAGES = 400


def build_demo_network(seed: int = 0, in_channels: int = 3):  # -> torch.nn.Module
    """A ResNet-style small CNN with BatchNorm, ReLU, a residual Add and a linear head.

    Args:
        seed: Seed of the weight initialisation and of the BN statistics.
        in_channels: Input channels.

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
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
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


def export_onnx(
    net,
    path: str | os.PathLike[str],
    *,
    keep_bn: bool,
    input_shape: tuple[int, ...] = DEMO_INPUT_SHAPE,
    opset: int = 17,
) -> Path:
    """Write :func:`onnx_bytes` of ``net`` to ``path`` atomically."""
    return atomic_write_bytes(path, onnx_bytes(net, input_shape, keep_bn=keep_bn, opset=opset))


def digits(size: int = 16, seed: int = 0):
    """scikit-learn's handwritten digits as uint8 ``N x size x size x 1``: (train, test) splits.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``; the last :data:`DEMO_TEST_IMAGES` of a seeded
        shuffle are the test split.
    """
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = np.round(d.images * (255 / 16)).astype(np.uint8)[..., None]
    x = fit_images(raw, (1, size, size)).permute(0, 2, 3, 1).numpy()
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    train, test = perm[:-DEMO_TEST_IMAGES], perm[-DEMO_TEST_IMAGES:]
    return (x[train], y[train]), (x[test], y[test])


def train_demo_network(x, y, *, epochs: int = 12, seed: int = 0):
    """Train :func:`build_demo_network` (1 input channel) on uint8 NHWC images; eval mode."""
    import torch
    import torch.nn.functional as F

    net = build_demo_network(seed, in_channels=x.shape[-1])
    for m in net.modules():  # fresh statistics: these are learnt from the digits
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    ys = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=epochs * -(-len(xs) // 64)
    )
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=gen).split(64):
            loss = F.cross_entropy(net(augment(xs[idx], gen)), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def run_demo(
    out_dir: str | os.PathLike[str], *, epochs: int = 12, steps: int = 300, progress: bool = True
) -> dict:
    """Train, export (BN kept and folded), quantize to int4 with the built-in pool, measure.

    Args:
        out_dir: Folder for the files (created).
        epochs: Training epochs of the demo CNN.
        steps: Fine-tuning steps of ``quantize``.
        progress: Progress lines and bars on stderr (only on a terminal).

    Returns:
        ``{"files": {...}, "fp32_accuracy", "int4_accuracy", "agreement", "report"}``.
    """
    import io

    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = digits()
    net = train_demo_network(x_train, y_train, epochs=epochs)
    kept = export_onnx(net, out / "demo_cnn.onnx", keep_bn=True)
    folded = export_onnx(net, out / "demo_cnn_folded.onnx", keep_bn=False)
    buf = io.BytesIO()
    np.savez(buf, images=x_test, labels=y_test)
    test = atomic_write_bytes(out / "digits_test.npz", buf.getvalue())
    report = quantize(
        kept,
        quant=QuantConfig(wbits=4, abits=4),
        train=TrainConfig(steps=steps, device="cpu"),
        data=DataConfig(proxy="builtin", eval=str(test)),
        run=RunConfig(progress=progress),
    )
    return {
        "files": {
            "fp32 (BN kept)": str(kept),
            "fp32 (BN folded)": str(folded),
            "held-out digits": str(test),
            "int4": report["output"],
            "report": str(default_report(Path(report["output"]))),
        },
        "fp32_accuracy": report["accuracy"]["fp32"],
        "int4_accuracy": report["accuracy"]["quantized"],
        "agreement": report["validation"]["fp32_vs_quant_top1_agreement"],
        "test_images": len(y_test),
        "report": report,
    }
