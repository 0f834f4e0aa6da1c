"""The baseline a user would run instead: onnxruntime's own static quantizer (per-channel QDQ).

Calibrates on images of a proxy file, tries MinMax and Percentile calibration and keeps the one
with the better accuracy on the labelled ``--select`` set (default: the CIFAR-10 test file; this
favours the baseline). Weights per channel (int8 / int4), activations per tensor (uint8 / uint4).

    python benchmarks/ort_static.py MODEL OUT --wbits 4 --abits 4 --calib proxy.npz
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zerop_deploy.data.sources import load_images, to_model_input  # noqa: E402
from zerop_deploy.validate.compare import accuracy  # noqa: E402


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray, name: str, batch: int = 32) -> None:
        self.batches = iter([{name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--wbits", type=int, choices=(4, 8), default=8)
    ap.add_argument("--abits", type=int, choices=(4, 8), default=8)
    ap.add_argument("--calib", type=Path, required=True)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument(
        "--select",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/data/cifar10_test.npz",
    )
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    src = load_images(a.calib)
    pick = rng.permutation(len(src.images))[: a.images]
    x = to_model_input(src.images[pick], (3, 32, 32)).numpy()
    sel = load_images(a.select)
    xs, ys = to_model_input(sel.images, (3, 32, 32)).numpy(), sel.labels
    wtype = QuantType.QInt8 if a.wbits == 8 else QuantType.QInt4
    atype = QuantType.QUInt8 if a.abits == 8 else QuantType.QUInt4
    best = (-1.0, "")
    with tempfile.TemporaryDirectory() as tmp:
        for method in (CalibrationMethod.MinMax, CalibrationMethod.Percentile):
            out = Path(tmp) / f"{method.name}.onnx"
            quantize_static(
                str(a.model),
                str(out),
                _Reader(x, "input"),
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
