"""The baseline a user would run instead: onnxruntime's own static quantizer (per-channel QDQ).

Calibrates on images of a proxy source (file or folder, fitted to the model's input with the
project's default preprocessing: resize 256 + center crop 224 at ImageNet size), tries MinMax and
Percentile calibration and keeps the one with the better accuracy on the labelled ``--select`` set
(default: the CIFAR-10 test file; this favours the baseline). Weights per channel (int8 / int4),
activations per tensor (uint8 / uint4).

    python benchmarks/ort_static.py MODEL OUT --wbits 4 --abits 4 --calib proxy.npz
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zerop_deploy.data.preprocess import Preprocess  # noqa: E402
from zerop_deploy.data.sources import open_source  # noqa: E402
from zerop_deploy.load.parity import input_shape  # noqa: E402
from zerop_deploy.validate.compare import accuracy  # noqa: E402


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray, name: str, batch: int = 32) -> None:
        self.batches = iter([{name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def model_input(model: Path) -> tuple[str, tuple[int, ...]]:
    """The name and ``(C, H, W)`` of the model's image input."""
    graph_input = onnx.load(str(model), load_external_data=False).graph.input[0]
    return graph_input.name, input_shape(graph_input)[1:]


def read_inputs(path: Path, chw, limit: int | None, *, shuffle: bool):
    """Float model inputs (and labels) of the first ``limit`` images, or a seeded sample of them."""
    pre = Preprocess()
    src = open_source(path, preprocess=pre)
    idx = np.arange(src.count)
    if shuffle:
        idx = np.random.default_rng(0).permutation(src.count)
    idx = np.sort(idx[: limit or src.count])
    images, got = src.read(idx, chw)
    labels = None if src.labels is None else src.labels[got]
    return pre.to_input(images).numpy(), labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--wbits", type=int, choices=(4, 8), default=8)
    ap.add_argument("--abits", type=int, choices=(4, 8), default=8)
    ap.add_argument("--calib", type=Path, required=True)
    ap.add_argument("--images", type=int, default=512, help="calibration images")
    ap.add_argument(
        "--select",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/data/cifar10_test.npz",
    )
    a = ap.parse_args()
    name, chw = model_input(a.model)
    x, _ = read_inputs(a.calib, chw, a.images, shuffle=True)
    xs, ys = read_inputs(a.select, chw, None, shuffle=False)
    wtype = QuantType.QInt8 if a.wbits == 8 else QuantType.QInt4
    atype = QuantType.QUInt8 if a.abits == 8 else QuantType.QUInt4
    best = (-1.0, "")
    with tempfile.TemporaryDirectory() as tmp:
        for method in (CalibrationMethod.MinMax, CalibrationMethod.Percentile):
            out = Path(tmp) / f"{method.name}.onnx"
            quantize_static(
                str(a.model),
                str(out),
                _Reader(x, name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=wtype,
                activation_type=atype,
                calibrate_method=method,
            )
            acc = accuracy(str(out), xs, ys)
            print(f"{method.name}: {100 * acc:.2f} %", file=sys.stderr)
            if acc > best[0]:
                best = (acc, str(out))
        shutil.copyfile(best[1], a.out)


if __name__ == "__main__":
    main()
