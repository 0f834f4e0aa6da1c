"""Our int4 convolutions against onnxruntime's int8 QLinearConv (u8 activations, s8 weights).

Every Conv node of a model (the shapes, weights and groups come from ``conv_resnet20.model_convs``)
is timed per layer, side by side in one process with a fixed thread count, in interleaved rounds:

- ``ort_nchw``: an ONNX ``QLinearConv`` on the NCHW uint8 input, int8 weights with per-output-
  channel scales (zero point 0), int32 bias, uint8 output. onnxruntime runs it as its NHWC kernel
  between two Transposes that it inserts.
- ``ort_nhwc``: ``com.microsoft.QLinearConv`` with ``channels_last=1`` on an NHWC uint8 input: the
  same kernel without the Transposes, which is what the layers of a whole quantized model run
  (onnxruntime's layout pass cancels the Transposes between consecutive layers).
- ``ours_u8``: ``kernels.conv2d_int4_quantized`` on the same uint8 NCHW input (float32 NCHW output).
- ``ours_f32``: ``kernels.conv2d_int4`` on the float input (quantized to int8 per image inside).

Our weights are the layer's weights quantized to int4 per output channel; onnxruntime gets the same
integer levels as int8 (its speed does not depend on the values).

    python kernels/bench/vs_qlinearconv.py --threads 2 --batch 1 64 --models resnet20 lite0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import interleaved_median, session  # noqa: E402
from conv_resnet20 import MODEL, int4_weights, model_convs  # noqa: E402

from zerop_deploy import kernels  # noqa: E402
from zerop_deploy.quant.primitives import unpack_int4  # noqa: E402

MODELS = {
    "resnet20": MODEL,
    "lite0": MODEL.parent / "efficientnet_lite0_imagenet_folded.onnx",
}
VARIANTS = ("ort_nchw", "ort_nhwc", "ours_u8", "ours_f32")
X_SCALE, Y_SCALE = 1 / 64, 1 / 16


def out_hw(spec: dict) -> tuple[int, int]:
    """Output height and width of a conv spec."""
    (h, w), (kh, kw) = spec["hw"], spec["w"].shape[2:]
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = spec["strides"], spec["dilations"], spec["pads"]
    return (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1


def qlinearconv_model(spec: dict, q: np.ndarray, scales: np.ndarray, batch: int, nhwc: bool):
    """One QLinearConv node (ONNX NCHW, or com.microsoft with channels_last) on a uint8 input."""
    c_out, c_in_g, kh, kw = q.shape
    c_in = c_in_g * spec["groups"]
    (h, w), (oh, ow) = spec["hw"], out_hw(spec)
    x_shape = [batch, h, w, c_in] if nhwc else [batch, c_in, h, w]
    y_shape = [batch, oh, ow, c_out] if nhwc else [batch, c_out, oh, ow]
    bias = np.clip(np.rint(spec["b"] / (X_SCALE * scales)), -(2**31), 2**31 - 1).astype(np.int32)
    inits = [
        numpy_helper.from_array(np.array(X_SCALE, np.float32), "xs"),
        numpy_helper.from_array(np.array(128, np.uint8), "xz"),
        numpy_helper.from_array(q.astype(np.int8), "w"),
        numpy_helper.from_array(scales.astype(np.float32), "ws"),
        numpy_helper.from_array(np.zeros(c_out, np.int8), "wz"),
        numpy_helper.from_array(np.array(Y_SCALE, np.float32), "ys"),
        numpy_helper.from_array(np.array(128, np.uint8), "yz"),
        numpy_helper.from_array(bias, "b"),
    ]
    attrs = {
        "kernel_shape": [kh, kw],
        "strides": spec["strides"],
        "pads": spec["pads"],
        "dilations": spec["dilations"],
        "group": spec["groups"],
    }
    if nhwc:
        attrs["channels_last"] = 1
    node = helper.make_node(
        "QLinearConv",
        ["X", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
        ["Y"],
        domain="com.microsoft" if nhwc else "",
        **attrs,
    )
    graph = helper.make_graph(
        [node],
        "qconv",
        [helper.make_tensor_value_info("X", TensorProto.UINT8, x_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.UINT8, y_shape)],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def time_layer(
    spec: dict, batch: int, threads: int, rounds: int, rng: np.random.Generator
) -> dict[str, float]:
    """Seconds per call of each variant for one conv layer."""
    w = spec["w"]
    packed, scales = int4_weights(w)
    q = unpack_int4(packed, int(np.prod(w.shape[1:]))).reshape(w.shape)
    c_in = w.shape[1] * spec["groups"]
    h, wd = spec["hw"]
    xq = rng.integers(0, 256, size=(batch, c_in, h, wd), dtype=np.uint8)
    xq_nhwc = np.ascontiguousarray(xq.transpose(0, 2, 3, 1))
    x = (xq.astype(np.float32) - 128) * X_SCALE
    nchw = session(qlinearconv_model(spec, q, scales, batch, nhwc=False), threads)
    nhwc = session(qlinearconv_model(spec, q, scales, batch, nhwc=True), threads)
    kw = dict(
        kernel_size=w.shape[2:],
        bias=spec["b"].astype(np.float32),
        stride=spec["strides"],
        padding=spec["pads"],
        dilation=spec["dilations"],
        groups=spec["groups"],
        threads=threads,
    )
    return interleaved_median(
        {
            "ort_nchw": lambda: nchw.run(None, {"X": xq}),
            "ort_nhwc": lambda: nhwc.run(None, {"X": xq_nhwc}),
            "ours_u8": lambda: kernels.conv2d_int4_quantized(
                xq, X_SCALE, 128, packed, scales, **kw
            ),
            "ours_f32": lambda: kernels.conv2d_int4(x, packed, scales, **kw),
        },
        rounds=rounds,
    )


def kind(spec: dict) -> str:
    """A short description of the layer: depthwise k x k, 1x1, or k x k, with the stride."""
    w = spec["w"]
    k = f"{w.shape[2]}x{w.shape[3]}"
    dw = spec["groups"] > 1 and spec["groups"] == w.shape[0] and w.shape[1] == 1
    name = f"dw {k}" if dw else k
    return name + (f" s{spec['strides'][0]}" if spec["strides"][0] > 1 else "")


def main() -> None:
    """Run the benchmark and print (and optionally write) the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    common.SPIN = False
    results = []
    for model in args.models:
        specs = model_convs(MODELS[model])
        for batch in args.batch:
            rng = np.random.default_rng(0)
            rows, by_kind = [], {}
            for spec in specs:
                t = {
                    k: v * 1e6
                    for k, v in time_layer(spec, batch, args.threads, args.rounds, rng).items()
                }
                w = spec["w"]
                row = {
                    "node": spec["name"],
                    "kind": kind(spec),
                    "shape": [batch, w.shape[1] * spec["groups"], *spec["hw"], w.shape[0]],
                    **t,
                }
                rows.append(row)
                agg = by_kind.setdefault(row["kind"], {"count": 0, **dict.fromkeys(VARIANTS, 0.0)})
                agg["count"] += 1
                for k in VARIANTS:
                    agg[k] += t[k]
                print(
                    f"{row['node'][-34:]:34s} {row['kind']:9s} {str(row['shape']):24s} "
                    + "  ".join(f"{k} {t[k]:9.0f}" for k in VARIANTS)
                    + f"  ort_nhwc/ours_u8 {t['ort_nhwc'] / t['ours_u8']:.2f}x",
                    flush=True,
                )
            tot = {k: sum(r[k] for r in rows) for k in VARIANTS}
            print(f"\n{model}, batch {batch}, {args.threads} threads, {len(rows)} convs (us):")
            print(f"{'layers':14s} " + " ".join(f"{k:>10s}" for k in VARIANTS) + "  ratio*")
            for name, agg in [*sorted(by_kind.items()), ("TOTAL", {"count": len(rows), **tot})]:
                label = f"{name} ({agg['count']})"
                print(
                    f"{label:14s} "
                    + " ".join(f"{agg[k]:10.0f}" for k in VARIANTS)
                    + f"  {agg['ort_nhwc'] / agg['ours_u8']:.2f}x"
                )
            print(
                "* ort_nhwc / ours_u8. Total speedups: ours u8 in vs ORT NHWC "
                f"{tot['ort_nhwc'] / tot['ours_u8']:.2f}x, vs ORT NCHW "
                f"{tot['ort_nchw'] / tot['ours_u8']:.2f}x; ours fp32 in vs ORT NHWC "
                f"{tot['ort_nhwc'] / tot['ours_f32']:.2f}x, vs ORT NCHW "
                f"{tot['ort_nchw'] / tot['ours_f32']:.2f}x\n",
                flush=True,
            )
            results.append(
                {
                    "model": model,
                    "batch": batch,
                    "threads": args.threads,
                    "rows": rows,
                    "by_kind": by_kind,
                    "total": tot,
                }
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
