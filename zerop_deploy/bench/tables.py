"""Latency tables of ``zerop-deploy bench``: onnxruntime fp32 / QDQ / MatMulNBits / int4 kernels.

End to end, the fp32 model (and its exported QDQ file when given) runs in onnxruntime on random
inputs. Per quantizable layer (Conv, Gemm, MatMul with a constant weight), the layer's real input
activation is captured once and four one-node variants are timed side by side, with the same fixed
thread count: onnxruntime fp32; onnxruntime QDQ (int4 weight through DequantizeLinear with ``axis``,
opset 21, and a uint8 QuantizeLinear/DequantizeLinear pair on the activation); onnxruntime's
``com.microsoft.MatMulNBits`` (bits 4, accuracy_level 4) where it applies (Gemm, MatMul, 1x1 Conv;
timed on the already flattened ``[M, K]`` activation); and our kernel (:mod:`zerop_deploy.kernels`).
Times are medians of interleaved rounds, in microseconds.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zerop_deploy import kernels
from zerop_deploy.errors import ValidationError
from zerop_deploy.load.parity import random_inputs
from zerop_deploy.load.read import read_model
from zerop_deploy.onnx_facts import constant_tensors

VARIANTS = ("ort_fp32_us", "ort_qdq_us", "ort_matmulnbits_us", "ours_int4_us")
_QOPS = ("Conv", "Gemm", "MatMul")


def _session(model: onnx.ModelProto | str, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    # Idle onnxruntime workers spin by default and keep burning cores after a run, which slows
    # whatever is timed next in this process (another session or our kernel): off, for all.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 4  # errors become our own one-line messages
    arg = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(arg, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        name = model if isinstance(model, str) else model.graph.name
        raise ValidationError(f"{name}: onnxruntime cannot load the model: {e}") from e


def nbits_packed(q: np.ndarray, block: int) -> np.ndarray:
    """int4 weights ``q`` [N, K] as MatMulNBits' ``B`` input, ``[N, ceil(K / block), block / 2]``.

    Codes are ``q + 8`` (MatMulNBits' default zero point 8, so ``(code - 8) * scale == q * scale``),
    two per byte, low nibble first; K is padded with zero weights to whole blocks.
    """
    n, k = q.shape
    blocks = -(-k // block)
    codes = np.full((n, blocks * block), 8, np.uint8)
    codes[:, :k] = (q.astype(np.int16) + 8).astype(np.uint8)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(n, blocks, block // 2)


def interleaved_median(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int = 7,
    min_seconds: float = 0.05,
    settle: float = 0.0,
) -> dict[str, float]:
    """Median seconds per call of each fn, timed in interleaved rounds so noise hits all alike.

    `settle` seconds of sleep before each timed batch let the idle threads of the previous variant
    stop spinning (onnxruntime's spin for a while after a run), so that they do not slow this one.
    """
    reps = {}
    for name, fn in fns.items():
        t0, count = time.perf_counter(), 0
        while count < 2 or time.perf_counter() - t0 < min_seconds:
            fn()
            count += 1
        reps[name] = max(1, int(count * min_seconds / max(time.perf_counter() - t0, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if settle:
                time.sleep(settle)
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / reps[name])
    return {name: statistics.median(v) for name, v in samples.items()}


def _model(
    nodes: list[onnx.NodeProto],
    x: np.ndarray,
    inits: list[onnx.TensorProto],
    opsets: dict[str, int],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()]
    )
    model.ir_version = 10
    return model


def _int4_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 (-7..7) per output channel (axis 0): ``(q int8, scales float32)``."""
    flat = w.reshape(w.shape[0], -1).astype(np.float32)
    scales = np.maximum(np.abs(flat).max(axis=1) / 7, 1e-12).astype(np.float32)
    q = np.clip(np.rint(flat / scales[:, None]), -7, 7).astype(np.int8)
    return q.reshape(w.shape), scales


def _uint8_qparams(x: np.ndarray) -> tuple[float, int]:
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))


class _Layer:
    """One quantizable node: its weight (as [N, ...] output-channel-first), bias and input."""

    def __init__(self, node: onnx.NodeProto, consts: dict[str, np.ndarray], x: np.ndarray) -> None:
        self.node, self.x = node, np.ascontiguousarray(x, dtype=np.float32)
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = consts[node.input[1]].astype(np.float32)
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not self.attrs.get("transB", 0)):
            w = w.T
        self.w = np.ascontiguousarray(w)
        bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).ravel()
        self.q, self.scales = _int4_per_channel(self.w)

    def supported(self) -> str | None:
        """Why our kernels cannot run this layer, or None."""
        a = self.attrs
        if self.node.op_type == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                return "Gemm with transA/alpha/beta"
            if self.bias is not None and self.bias.shape != (self.w.shape[0],):
                return "Gemm bias is not a per-output vector"
        if self.node.op_type == "MatMul" and self.x.ndim < 2:
            return "MatMul on a 1-D input"
        if self.node.op_type == "Conv":
            if self.x.ndim != 4 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                return "Conv that is not 2-D with explicit pads"
        return None

    def conv_kwargs(self) -> dict[str, Any]:
        a = self.attrs
        return {
            "kernel_size": tuple(self.w.shape[2:]),
            "stride": tuple(a.get("strides", [1, 1])),
            "padding": tuple(a.get("pads", [0, 0, 0, 0])),
            "dilation": tuple(a.get("dilations", [1, 1])),
            "groups": int(a.get("group", 1)),
        }

    def matmul_input(self) -> np.ndarray | None:
        """Return the activation as ``[M, K]`` for a plain matrix product, else None."""
        if self.node.op_type in ("Gemm", "MatMul"):  # leading dimensions fold into M
            return None if self.supported() else self.x.reshape(-1, self.x.shape[-1])
        kw = self.conv_kwargs()
        if (
            self.w.shape[2:] == (1, 1)
            and kw["stride"] == (1, 1)
            and kw["groups"] == 1
            and not any(kw["padding"])
            and kw["dilation"] == (1, 1)
        ):
            return np.ascontiguousarray(self.x.transpose(0, 2, 3, 1).reshape(-1, self.x.shape[1]))
        return None

    def _node(self, w_name: str) -> onnx.NodeProto:
        inputs = ["Xd" if w_name == "Wd" else "X", w_name]
        if self.bias is not None:
            inputs.append("B")
        op = "Gemm" if self.node.op_type == "Gemm" else self.node.op_type
        attrs = dict(self.attrs)
        if op == "Gemm":  # the weight is stored [N, K] here; the other attributes stay
            attrs = {**{k: v for k, v in attrs.items() if k != "transB"}, "transB": 1}
        if op == "MatMul":
            inputs = inputs[:2]
        return helper.make_node(op, inputs, ["Y"], **attrs)

    def _bias_inits(self) -> list[onnx.TensorProto]:
        return [] if self.bias is None else [numpy_helper.from_array(self.bias, "B")]

    def fp32_model(self) -> onnx.ModelProto:
        w = self.w if self.node.op_type != "MatMul" else self.w.T.copy()
        return _model(
            [self._node("W")],
            self.x,
            [numpy_helper.from_array(w, "W"), *self._bias_inits()],
            {"": 21},
        )

    def qdq_model(self) -> onnx.ModelProto:
        xs, xzp = _uint8_qparams(self.x)
        q = self.q if self.node.op_type != "MatMul" else self.q.T
        axis = 0 if self.node.op_type != "MatMul" else 1
        inits = [
            helper.make_tensor("Wq", TensorProto.INT4, q.shape, q.ravel().tolist()),
            numpy_helper.from_array(self.scales, "Ws"),
            numpy_helper.from_array(np.array(xs, np.float32), "Xs"),
            numpy_helper.from_array(np.array(xzp, np.uint8), "Xz"),
            *self._bias_inits(),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["X", "Xs", "Xz"], ["Xq"]),
            helper.make_node("DequantizeLinear", ["Xq", "Xs", "Xz"], ["Xd"]),
            helper.make_node("DequantizeLinear", ["Wq", "Ws"], ["Wd"], axis=axis),
            self._node("Wd"),
        ]
        return _model(nodes, self.x, inits, {"": 21})

    def nbits_model(self, a: np.ndarray) -> onnx.ModelProto:
        n, k = self.w.shape[0], a.shape[-1]
        block = max(16, min(128, 1 << (k.bit_length() - 1)))
        packed = nbits_packed(self.q.reshape(n, -1), block)
        scales = np.repeat(self.scales, packed.shape[1]).astype(np.float32)
        inputs = ["X", "Wp", "Ws"] + ([] if self.bias is None else ["", "", "B"])
        node = helper.make_node(
            "MatMulNBits",
            inputs,
            ["Y"],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=block,
            accuracy_level=4,
        )
        inits = [
            numpy_helper.from_array(packed, "Wp"),
            numpy_helper.from_array(scales, "Ws"),
            *self._bias_inits(),
        ]
        return _model([node], a, inits, {"": 21, "com.microsoft": 1})

    def ours(self, threads: int) -> Callable[[], object]:
        packed = kernels.pack_int4(self.q.reshape(self.q.shape[0], -1))
        if self.node.op_type == "Conv":
            kw = self.conv_kwargs()
            return lambda: kernels.conv2d_int4(
                self.x, packed, self.scales, bias=self.bias, threads=threads, **kw
            )
        x2 = self.matmul_input()
        return lambda: kernels.matmul_int4(x2, packed, self.scales, bias=self.bias, threads=threads)


def _capture_inputs(
    proto: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray], threads: int
) -> dict[str, np.ndarray]:
    """Run the model once with every layer input exposed as an output."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output}
    wanted = [n for n in dict.fromkeys(names) if n not in feeds]
    for name in wanted:
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    outs = _session(m, threads).run(wanted, feeds) if wanted else []
    return {**{n: feeds[n] for n in names if n in feeds}, **dict(zip(wanted, outs, strict=True))}


def _time_layer(layer: _Layer, threads: int, rounds: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "node": layer.node.name,
        "op": layer.node.op_type,
        "input_shape": list(layer.x.shape),
        "weight_shape": list(layer.w.shape),
    }
    feed = {"X": layer.x}
    fp32, qdq = _session(layer.fp32_model(), threads), _session(layer.qdq_model(), threads)
    fns: dict[str, Callable[[], object]] = {
        "ort_fp32_us": lambda: fp32.run(None, feed),
        "ort_qdq_us": lambda: qdq.run(None, feed),
    }
    a = layer.matmul_input()
    if a is not None:
        nb = _session(layer.nbits_model(a), threads)
        fns["ort_matmulnbits_us"] = lambda: nb.run(None, {"X": a})
    why = layer.supported() or (None if kernels.available() else "native kernels not built")
    if why is None:
        fns["ours_int4_us"] = layer.ours(threads)
    times = interleaved_median(fns, rounds=rounds)
    for key in VARIANTS:
        row[key] = round(times[key] * 1e6, 1) if key in times else None
    row["note"] = why
    return row


def bench(
    model_path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    qdq_path: str | os.PathLike[str] | None = None,
    deploy_path: str | os.PathLike[str] | None = None,
    batch: int = 1,
    batches: tuple[int, ...] | None = None,
    rounds: int = 5,
    layers: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Time a model end to end and per quantizable layer (see the module docstring).

    Args:
        model_path: The fp32 ``.onnx`` model.
        threads: Threads for onnxruntime and our kernels; None = all cores. Always reported.
        qdq_path: The exported QDQ model of the same network, timed end to end beside the fp32 one.
        deploy_path: The deployment file (``--target ort-cpu``), timed beside them.
        batch: Batch size used for a dynamic batch dimension (layers, and end to end by default).
        batches: Batch sizes of the end-to-end table (default: ``(batch,)``).
        rounds: Interleaved timing rounds (the median is reported).
        layers: Also time every quantizable layer.
        seed: Seed of the random inputs.

    Returns:
        ``{"model", "qdq_model", "deploy_model", "threads", "batch", "kernels": {...},
        "end_to_end": {"fp32_ms", "qdq_ms", "deploy_ms", "by_batch": [{"batch", "fp32_ms",
        "qdq_ms", "deploy_ms", "qdq_speedup", "deploy_speedup"}]}, "layers": [{"node", "op",
        "input_shape", "weight_shape", "ort_fp32_us", "ort_qdq_us", "ort_matmulnbits_us",
        "ours_int4_us", "note"}], "totals": {...}}``; a variant that does not apply is None.
        Speedups are fp32 time / file time, from the same interleaved rounds.

    Raises:
        InputError: If a model file is missing or invalid.
        ValidationError: If onnxruntime cannot run a model.

    """
    threads = int(threads or os.cpu_count() or 1)
    proto = read_model(model_path)
    files = {"fp32_ms": str(model_path)}
    for key, path in (("qdq_ms", qdq_path), ("deploy_ms", deploy_path)):
        if path is not None:
            read_model(path)
            files[key] = str(path)
    sessions = {k: _session(p, threads) for k, p in files.items()}
    by_batch = []
    for b in batches or (batch,):
        feeds = random_inputs(proto, batch=b, seed=seed, source=str(model_path))
        runs = {k: (lambda s=s, f=feeds: s.run(None, f)) for k, s in sessions.items()}
        e2e = interleaved_median(runs, rounds=rounds)
        row: dict[str, Any] = {"batch": b}
        for key in ("fp32_ms", "qdq_ms", "deploy_ms"):
            row[key] = round(e2e[key] * 1e3, 4) if key in e2e else None
        for key in ("qdq", "deploy"):
            t = e2e.get(f"{key}_ms")
            row[f"{key}_speedup"] = round(e2e["fp32_ms"] / t, 3) if t else None
        by_batch.append(row)
    first = by_batch[0]
    doc: dict[str, Any] = {
        "model": str(model_path),
        "qdq_model": None if qdq_path is None else str(qdq_path),
        "deploy_model": None if deploy_path is None else str(deploy_path),
        "threads": threads,
        "batch": batch,
        "kernels": {"available": kernels.available(), **kernels.cpu_features()},
        "end_to_end": {
            "fp32_ms": first["fp32_ms"],
            "qdq_ms": first["qdq_ms"],
            "deploy_ms": first["deploy_ms"],
            "by_batch": by_batch,
        },
        "layers": [],
        "totals": {},
    }
    feeds = random_inputs(proto, batch=batch, seed=seed, source=str(model_path))
    if layers:
        consts = {k: numpy_helper.to_array(t) for k, t in constant_tensors(proto.graph).items()}
        nodes = [
            n
            for n in proto.graph.node
            if n.op_type in _QOPS and len(n.input) > 1 and n.input[1] in consts
        ]
        acts = _capture_inputs(proto, [n.input[0] for n in nodes], feeds, threads)
        doc["layers"] = [
            _time_layer(_Layer(n, consts, acts[n.input[0]]), threads, rounds) for n in nodes
        ]
    doc["totals"] = {
        k: round(sum(r[k] for r in doc["layers"] if r[k] is not None), 1) for k in VARIANTS
    }
    return doc
