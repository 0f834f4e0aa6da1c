"""The quantize report (DESIGN.md "quantize report") and its onnxruntime validation section."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from typing import Any

import numpy as np
import onnx
import torch

from zerop_deploy.config import DataConfig
from zerop_deploy.data.batches import images_per_pass
from zerop_deploy.data.sources import iter_batches, load_pool
from zerop_deploy.quant.distill import FeatureTaps, feature_pairs
from zerop_deploy.quant.graph import QUANTIZATION_SCHEME, float_nodes
from zerop_deploy.validate.compare import OrtRunner, top1_matches

_PACKAGES = ("zerop-deploy", "torch", "onnx", "onnxruntime", "onnx2torch", "numpy")


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape the result."""
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def layers_section(plan) -> list[dict[str, Any]]:
    """One entry per layer of the student's plan (skipped layers say why)."""
    return [
        {
            "node": p.node,
            "op": p.op,
            "wbits": p.wbits,
            "abits": p.abits,
            "activation_signed": p.act_signed,
            "folded_bn": p.folded_bn,
            **({"skipped": p.skipped} if p.skipped else {}),
        }
        for p in plan
    ]


def training_section(result, wall: float) -> dict[str, Any]:
    """What the fine-tuning loop did."""
    return {
        "steps": result.steps,
        "wall_seconds": round(result.wall_seconds, 2),
        "images_per_second": round(result.images_per_second, 1),
        "final_loss": result.final_loss,
        "resumed_from_step": result.resumed_from,
        "total_seconds": round(wall, 2),
    }


class _Tally:
    """Running counts of a validation pass over chunks of images."""

    def __init__(self) -> None:
        self.n = self.ort_student = self.fp32_quant = self.correct_fp32 = self.correct_q = 0
        self.max_diff = 0.0
        self.labelled = True

    def add(self, q, ref, student, labels) -> None:
        self.n += len(q)
        self.ort_student += top1_matches(q, student)
        self.fp32_quant += top1_matches(q, ref)
        self.max_diff = max(self.max_diff, float(np.abs(q - ref).max()))
        if labels is None:
            self.labelled = False
        else:
            self.correct_fp32 += top1_matches(ref, labels)
            self.correct_q += top1_matches(q, labels)


def validation_section(
    proto: onnx.ModelProto,
    qproto: onnx.ModelProto,
    student: torch.nn.Module,
    chunks: Iterable[tuple[torch.Tensor, np.ndarray | None]],
    source: str,
) -> dict[str, Any]:
    """Run the fp32 and the exported model in onnxruntime, and the student in torch, chunk by chunk.

    Args:
        proto: The original model.
        qproto: The exported QDQ model.
        student: The fake-quantized student (CPU, eval mode).
        chunks: ``(model-ready float images, labels or None)`` pairs; streamed, never pooled.
        source: What the images are ("eval", "proxy holdout"), for the report.

    Returns:
        ``{"validation": {...}}`` plus ``"accuracy"`` when every chunk had labels.
    """
    quantized, reference = OrtRunner(qproto), OrtRunner(proto)  # one session each, every chunk
    tally = _Tally()
    for x, labels in chunks:
        step = images_per_pass(x.shape, 256)
        with torch.no_grad():
            s = torch.cat([student(x[i : i + step]) for i in range(0, len(x), step)]).numpy()
        xs = x.numpy()
        q, ref = quantized.logits(xs, batch_size=step), reference.logits(xs, batch_size=step)
        tally.add(q, ref, s.reshape(len(s), -1), labels)
    n = max(tally.n, 1)
    doc: dict[str, Any] = {
        "validation": {
            "images": tally.n,
            "source": source,
            "ort_vs_student_top1_agreement": tally.ort_student / n,
            "fp32_vs_quant_top1_agreement": tally.fp32_quant / n,
            "max_abs_logit_diff": tally.max_diff,
        }
    }
    if tally.labelled and tally.n:
        doc["accuracy"] = {"fp32": tally.correct_fp32 / n, "quantized": tally.correct_q / n}
    return doc


def layer_sqnr(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    pairs: list[tuple[str, str]],
    x: torch.Tensor,
) -> list[float]:
    """Output SQNR (dB) of every quantized layer against the fp32 model, on images ``x``.

    ``10 log10(sum t^2 / sum (s - t)^2)`` between the student layer's output and the teacher
    module it reproduces (the BN after a folded Conv), both running end to end, so a layer's value
    includes the error of the layers before it; the drop from one layer to the next is what the
    layer itself adds. One value per pair, in order.
    """
    taps = FeatureTaps(teacher, student, pairs)
    signal = [0.0] * len(pairs)
    noise = [0.0] * len(pairs)
    try:
        with torch.no_grad():
            step = images_per_pass(x.shape, 128)
            for i in range(0, len(x), step):
                teacher(x[i : i + step])
                student(x[i : i + step])
                for k, (t_name, s_name) in enumerate(pairs):
                    t, s = (v.double() for v in taps.outputs(t_name, s_name))
                    signal[k] += float(t.pow(2).sum())
                    noise[k] += float((s - t).pow(2).sum())
    finally:
        taps.remove()
    return [
        10 * float(np.log10(sg / max(nz, 1e-30))) if sg > 0 else 0.0
        for sg, nz in zip(signal, noise, strict=True)
    ]


def header(src, out, quant, train, data, proxy, plan, device, proto) -> dict[str, Any]:
    """The report's fixed part: what was asked, what data was used, the layers, the versions.

    ``quantization_scheme`` says how each kind of node is quantized and ``float_nodes`` lists every
    compute node left in float (unquantizable ones and layers the plan skipped) with the reason.
    """
    return {
        "input": str(src),
        "output": str(out),
        "bits": {
            "weights": quant.wbits,
            "activations": quant.abits,
            "first_last": quant.first_last_bits,
        },
        "device": str(device),
        "seed": train.seed,
        "proxy": proxy.section,
        "synthetic": proxy.synthetic_section,
        "layers": layers_section(plan),
        "quantization_scheme": QUANTIZATION_SCHEME,
        "float_nodes": [
            *float_nodes(proto),
            *({"node": p.node, "op": p.op, "reason": p.skipped} for p in plan if p.skipped),
        ],
        "config": {"quant": quant.to_dict(), "train": train.to_dict(), "data": data.to_dict()},
        "versions": versions(),
    }


def add_layer_sqnr(doc, teacher, student, proto, plan, proxy, data: DataConfig) -> None:
    """Add ``output_sqnr_db`` to every quantized layer of the report (256 validation images)."""
    x = proxy.holdout
    if len(x) == 0:
        x = torch.cat([proxy.train[:256], proxy.synthetic[:256]])
    values = iter(layer_sqnr(teacher, student, feature_pairs(proto, plan), data.preprocess.to_input(
        x[:256])))  # fmt: skip
    for entry, p in zip(doc["layers"], plan, strict=True):
        if p.skipped is None:
            entry["output_sqnr_db"] = round(next(values), 2)


def validation(proto, qproto, student, proxy, data: DataConfig, chw, sources) -> dict[str, Any]:
    """Validate on the --eval images (streamed), else on the held-back proxy images."""
    if data.eval is not None:
        (src,) = sources(data.eval)
        chunks = (
            (data.preprocess.to_input(c.images), c.labels)
            for c in iter_batches(src, chw, batch=images_per_pass(chw, 2048))
        )
        return validation_section(proto, qproto, student, chunks, "eval")
    x, source = proxy.holdout, "proxy holdout"
    if len(x) == 0 and len(proxy.train):
        x = proxy.train[:256]
    elif len(x) == 0:  # synthetic-only: natural images the student never saw, only to validate
        x, source = load_pool(sources("builtin")[0], chw, limit=512).images, "builtin"
    return validation_section(proto, qproto, student, [(data.preprocess.to_input(x), None)], source)
