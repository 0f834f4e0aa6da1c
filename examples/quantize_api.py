"""Quantize a model from Python: the same run as ``zerop-deploy quantize``, configured in code.

    python examples/quantize_api.py model.onnx [--proxy DATA] [--eval LABELLED] [--steps 500]

Without ``--proxy`` the built-in pool of public photos is used.
"""

from __future__ import annotations

import argparse

from zerop_deploy.api import quantize
from zerop_deploy.config import DataConfig, QuantConfig, TrainConfig


def main() -> None:
    """Parse the arguments and run."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--proxy", default="builtin", help="image folder, .npz, .npy or builtin")
    ap.add_argument("--eval", default=None, help="labelled images for accuracy")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--synthetic", type=int, default=0)
    args = ap.parse_args()

    report = quantize(
        args.model,
        quant=QuantConfig(wbits=4, abits=4, first_last_bits=8),  # == --bits 4
        train=TrainConfig(steps=args.steps, seed=0),
        data=DataConfig(proxy=args.proxy, synthetic=args.synthetic, eval=args.eval),
    )
    v = report["validation"]
    print(f"wrote {report['output']}")
    print(f"top-1 agreement with fp32: {100 * v['fp32_vs_quant_top1_agreement']:.2f} %")
    if "accuracy" in report:
        a = report["accuracy"]
        print(f"accuracy: fp32 {100 * a['fp32']:.2f} % -> int4 {100 * a['quantized']:.2f} %")


if __name__ == "__main__":
    main()
