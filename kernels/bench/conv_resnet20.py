"""The convolutions of ResNet-20 (CIFAR-10) at batch 64: our int4 conv vs onnxruntime fp32 Conv.

Every Conv node of the model (``../shared/models/resnet20_cifar10_folded.onnx`` when present, else
the standard ResNet-20 shapes with random weights) becomes a one-node onnxruntime model; our kernel
runs the same shapes with the weights quantized to int4 per output channel. Times are per layer and
summed, measured side by side in one process with a fixed thread count.

    python kernels/bench/conv_resnet20.py --threads 2 --batch 64 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import interleaved_median, session  # noqa: E402

from zerop_deploy import kernels  # noqa: E402

MODEL = Path(__file__).resolve().parents[3] / "shared" / "models" / "resnet20_cifar10_folded.onnx"


def standard_convs() -> list[dict]:
    """ResNet-20 CIFAR conv shapes: (c_in, c_out, H, stride)."""
    specs = [(3, 16, 32, 1)] + [(16, 16, 32, 1)] * 6
    specs += [(16, 32, 32, 2)] + [(32, 32, 16, 1)] * 5
    specs += [(32, 64, 16, 2)] + [(64, 64, 8, 1)] * 5
    rng = np.random.default_rng(0)
    return [
        {
            "name": f"conv{i}",
            "w": rng.standard_normal((co, ci, 3, 3)).astype(np.float32) * 0.1,
            "b": np.zeros(co, np.float32),
            "h": h,
            "stride": s,
            "pad": 1,
        }
        for i, (ci, co, h, s) in enumerate(specs)
    ]


def _input_shapes(model: onnx.ModelProto, names: list[str]) -> dict[str, list[int]]:
    """Shapes of the named tensors, by shape inference or else by one batch-1 onnxruntime run."""
    m = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(m.graph.value_info) + list(m.graph.input)
    }
    missing = [n for n in names if not all(shapes.get(n, [0])[1:])]
    if missing:  # e.g. behind Pad nodes whose pads are computed in the graph
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        for name in missing:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        inp = probe.graph.input[0]
        dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        feed = {inp.name: np.zeros(dims, np.float32)}
        outs = session(probe, 1).run(missing, feed)
        shapes.update({n: list(o.shape) for n, o in zip(missing, outs, strict=True)})
    return shapes


def model_convs(path: Path) -> list[dict]:
    """Return the Conv nodes of a model, with their input size (found by shape inference).

    Keys: name, w, b, h (input height), stride, pad (top pad) as the ResNet-20 shapes need, and
    hw (input height, width), strides, pads (top, left, bottom, right), dilations, groups.
    """
    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    shapes = _input_shapes(model, [n.input[0] for n in convs])
    out = []
    for node in convs:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = init[node.input[1]]
        b = init[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        strides = list(attrs.get("strides", [1, 1]))
        out.append(
            {
                "name": node.name,
                "w": w,
                "b": b,
                "h": shapes[node.input[0]][2],
                "stride": strides[0],
                "pad": pads[0],
                "hw": tuple(shapes[node.input[0]][2:4]),
                "strides": strides,
                "pads": pads,
                "dilations": list(attrs.get("dilations", [1, 1])),
                "groups": int(attrs.get("group", 1)),
            }
        )
    return out


def conv_model(spec: dict, batch: int) -> onnx.ModelProto:
    """Build a one-node fp32 Conv model with the layer's weights and bias."""
    w, h = spec["w"], spec["h"]
    oh = (h + 2 * spec["pad"] - w.shape[2]) // spec["stride"] + 1
    node = helper.make_node(
        "Conv",
        ["X", "W", "B"],
        ["Y"],
        kernel_shape=list(w.shape[2:]),
        strides=[spec["stride"]] * 2,
        pads=[spec["pad"]] * 4,
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, w.shape[1], h, h])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [batch, w.shape[0], oh, oh])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(spec["b"], "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def int4_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int4 (-7..7) quantization, packed."""
    scales = (np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / 7).astype(np.float32) + 1e-12
    q = np.clip(np.rint(w / scales[:, None, None, None]), -7, 7).astype(np.int8)
    return kernels.pack_int4(q.reshape(w.shape[0], -1)), scales


def time_layer(
    spec: dict, batch: int, threads: int, rounds: int, rng: np.random.Generator
) -> dict[str, float]:
    """Seconds per call of onnxruntime fp32 Conv and our int4 conv (fp32 and uint8 input)."""
    w = spec["w"]
    x = rng.random((batch, w.shape[1], spec["h"], spec["h"]), dtype=np.float32)
    xq = (x * 255).astype(np.uint8)
    packed, scales = int4_weights(w)
    sess = session(conv_model(spec, batch), threads)
    kw = dict(
        kernel_size=w.shape[2:],
        bias=spec["b"],
        stride=spec["stride"],
        padding=spec["pad"],
        threads=threads,
    )
    return interleaved_median(
        {
            "ort_fp32_us": lambda: sess.run(None, {"X": x}),
            "ours_int4_us": lambda: kernels.conv2d_int4(x, packed, scales, **kw),
            "ours_int4_u8_us": lambda: kernels.conv2d_int4_quantized(
                xq, 1 / 255, 0, packed, scales, **kw
            ),
        },
        rounds=rounds,
    )


def main() -> None:
    """Run the benchmark and print (and optionally write) the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--ort-spin", action="store_true", help="let onnxruntime's idle threads spin")
    args = ap.parse_args()
    common.SPIN = args.ort_spin
    specs = model_convs(MODEL) if MODEL.exists() else standard_convs()
    source = str(MODEL) if MODEL.exists() else "standard shapes, random weights"
    rng = np.random.default_rng(0)
    rows, tot = [], {"ort_fp32_us": 0.0, "ours_int4_us": 0.0, "ours_int4_u8_us": 0.0}
    for spec in specs:
        w = spec["w"]
        t = time_layer(spec, args.batch, args.threads, args.rounds, rng)
        row = {
            "node": spec["name"],
            "shape": [args.batch, w.shape[1], spec["h"], spec["h"], w.shape[0]],
            "stride": spec["stride"],
            **{k: v * 1e6 for k, v in t.items()},
        }
        for k in tot:
            tot[k] += row[k]
        rows.append(row)
        print(
            f"{row['node']:32s} {str(row['shape']):22s} s{row['stride']}  "
            f"ort fp32 {row['ort_fp32_us']:9.0f} us  ours int4 {row['ours_int4_us']:9.0f} us  "
            f"(u8 in {row['ours_int4_u8_us']:9.0f} us)",
            flush=True,
        )
    print(
        f"TOTAL ({len(rows)} convs, batch {args.batch}, {args.threads} threads, {source}): "
        f"ort fp32 {tot['ort_fp32_us'] / 1e3:.1f} ms, ours int4 {tot['ours_int4_us'] / 1e3:.1f} ms "
        f"(u8 input {tot['ours_int4_u8_us'] / 1e3:.1f} ms); "
        f"ratio ours/ort {tot['ours_int4_us'] / tot['ort_fp32_us']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"source": source, "rows": rows, "total": tot}, indent=2))


if __name__ == "__main__":
    main()
