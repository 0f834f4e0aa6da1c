"""Choose proxy data among your own image folders (or .npz/.npy files) for a model.

    python examples/select_proxy.py model.onnx photos/ scans/ street.npz [--plot ranking.png]

Prints the candidates ranked by BN-statistics distance (closest first) and the command that
quantizes with the winner.
"""

from __future__ import annotations

import argparse

from zerop_deploy.api import select_proxy


def main() -> None:
    """Parse the arguments and run."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("candidates", nargs="+")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()

    doc = select_proxy(
        args.model, [*args.candidates, "builtin"], samples=args.samples, plot=args.plot
    )
    print(f"scored by {doc['method']} ({doc['samples']} images per candidate)")
    for i, row in enumerate(doc["ranking"], 1):
        print(f"{i:>2}. {row['candidate']:<40} {row['distance']:.4f}")
    best = doc["ranking"][0]["candidate"]
    print(f"\nzerop-deploy quantize {args.model} --bits 4 --proxy {best}")


if __name__ == "__main__":
    main()
