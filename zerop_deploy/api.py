"""The Python API: one verb per pipeline stage, each configured by frozen config objects.

``quantize(model, quant=QuantConfig(...), train=TrainConfig(...), data=DataConfig(...))`` reads the
model, converts it, builds and calibrates the fake-quantized student, fine-tunes it by distillation,
exports the QDQ model into the original graph, checks it in onnxruntime and writes the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zerop_deploy.config import DataConfig, QuantConfig, TrainConfig
from zerop_deploy.errors import ConfigError, InputError, QualityGateError
from zerop_deploy.fileio import atomic_write_text, check_output_path

if TYPE_CHECKING:
    import onnx

_SUFFIX = {(4, 4): ".int4.onnx", (8, 8): ".int8.onnx", (4, 8): ".w4a8.onnx"}


def default_output(model: str | os.PathLike[str], quant: QuantConfig) -> Path:
    """Map ``model.onnx`` to ``model.int4.onnx``, ``.int8.onnx``, ``.w4a8.onnx`` or ``.wXaY``."""
    p = Path(model)
    suffix = _SUFFIX.get((quant.wbits, quant.abits), f".w{quant.wbits}a{quant.abits}.onnx")
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(stem + suffix)


def default_report(output: Path) -> Path:
    """The report next to the output: ``model.int4.onnx`` -> ``model.int4.report.json``."""
    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    return output.with_name(stem + ".report.json")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a ConfigError.

    Under ``torchrun`` each process takes the GPU of its ``LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


@dataclass
class _Images:
    train: torch.Tensor
    holdout: torch.Tensor
    eval: torch.Tensor | None
    eval_labels: np.ndarray | None
    proxy_source: str
    skipped: int


def _input_chw(proto: onnx.ModelProto, source: str) -> tuple[int, int, int]:
    from zerop_deploy.load import graph_inputs, input_shape

    inputs = graph_inputs(proto)
    if len(inputs) != 1:
        raise InputError(
            f"{source}: the model has {len(inputs)} inputs; quantize needs one image input"
        )
    shape = input_shape(inputs[0], batch=1, source=source)
    if len(shape) != 4:
        raise InputError(
            f"{source}: input '{inputs[0].name}' has shape {shape}; expected N x C x H x W"
        )
    return shape[1], shape[2], shape[3]


def _load_images(data: DataConfig, chw: tuple[int, int, int], seed: int) -> _Images:
    from zerop_deploy.data import load_images, to_model_input

    assert data.proxy is not None  # checked by quantize()
    proxy = load_images(data.proxy)
    x = to_model_input(proxy.images, chw, mean=data.mean, std=data.std)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_hold = min(1000, int(len(x) * data.holdout))
    hold, train = x[perm[:n_hold]], x[perm[n_hold:]]
    ev, labels = None, None
    if data.eval is not None:
        es = load_images(data.eval)
        if es.labels is None:
            raise InputError(
                f"{data.eval}: --eval needs labelled images (.npz 'labels' or class folders)"
            )
        ev, labels = to_model_input(es.images, chw, mean=data.mean, std=data.std), es.labels
    return _Images(train, hold, ev, labels, proxy.source, proxy.skipped)


def _fingerprint(model: Path, quant: QuantConfig, train: TrainConfig, data: DataConfig) -> str:
    h = hashlib.sha256(model.read_bytes())
    t = {k: v for k, v in train.to_dict().items() if k not in ("device", "checkpoint_every_s")}
    h.update(json.dumps([quant.to_dict(), t, data.to_dict()], sort_keys=True, default=str).encode())
    return h.hexdigest()


def _say(progress: bool, message: str) -> None:
    """One progress line on stderr when it is a terminal (stdout stays free for --json)."""
    if progress and sys.stderr.isatty():
        print(f"zerop-deploy: {message}", file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("zerop-deploy", "torch", "onnx", "onnxruntime", "onnx2torch", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def quantize(
    model: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    quant: QuantConfig | None = None,
    train: TrainConfig | None = None,
    data: DataConfig | None = None,
    report: str | os.PathLike[str] | None = None,
    resume: bool = False,
    min_agreement: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Quantize an ONNX model with distillation on proxy data and export it as a QDQ ONNX model.

    Args:
        model: The fp32 ``.onnx`` file (never modified).
        output: Output path; default from :func:`default_output`.
        quant: Bit widths and layer choices.
        train: Fine-tuning settings.
        data: Proxy and evaluation images.
        report: Report path; default from :func:`default_report`.
        resume: Continue from the checkpoint a killed run left next to the output.
        min_agreement: Fail with QualityGateError (exit 1) when the fp32-vs-quantized top-1
            agreement is below this fraction; outputs are still written.
        progress: Show progress bars on stderr (only on a terminal).

    Returns:
        The report (also written as JSON).
    """
    quant, train, data = quant or QuantConfig(), train or TrainConfig(), data or DataConfig()
    src = Path(model)
    out = check_output_path(output or default_output(src, quant), [src])
    rep = check_output_path(report or default_report(out), [src, out])
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise ConfigError(f"--min-agreement {min_agreement}: must be a fraction in [0, 1]")
    device = resolve_device(train.device)
    torch.manual_seed(train.seed)
    if data.proxy is None:
        raise InputError("no proxy data: pass --proxy PATH (a folder of images, a .npz or a .npy)")
    for path in (data.proxy, data.eval):
        if path is not None and not Path(path).exists():
            raise InputError(f"{path}: no such file or folder; pass an image folder, .npz or .npy")

    from zerop_deploy.load import load_model

    _say(progress, f"reading and converting {src}")
    loaded = load_model(src)
    proto, teacher = loaded.proto, loaded.module
    chw = _input_chw(proto, str(src))
    images = _load_images(data, chw, train.seed)
    _say(
        progress,
        f"{len(images.train)} proxy images for training, {len(images.holdout)} held back"
        + (f", {len(images.eval)} for evaluation" if images.eval is not None else ""),
    )
    t_start = time.monotonic()
    student, plan, result = _fine_tune(
        teacher,
        proto,
        images,
        quant,
        train,
        device,
        checkpoint=out.with_name(out.name + ".ckpt"),
        fingerprint=_fingerprint(src, quant, train, data),
        resume=resume,
        progress=progress,
    )
    from zerop_deploy.export import export_qdq, save_qdq
    from zerop_deploy.quant.qat import distributed_context
    from zerop_deploy.quant.student import layer_quants

    rank, world = distributed_context(device)
    if world > 1:  # every rank is done training: leave the process group cleanly, together
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:  # torchrun: rank 0 exports, validates and writes the report
        return {}

    _say(progress, f"exporting {out}")
    qproto = export_qdq(proto, layer_quants(student, plan, proto), int32_bias=True)
    save_qdq(qproto, out)
    _say(progress, "validating the exported model in onnxruntime")
    doc = _report(
        src, out, quant, train, data, images, plan, result, device, time.monotonic() - t_start
    )
    doc["training"]["processes"] = world
    doc.update(_validation(proto, qproto, student, images))
    atomic_write_text(rep, json.dumps(doc, indent=2) + "\n")
    ckpt = out.with_name(out.name + ".ckpt")
    if ckpt.exists():
        ckpt.unlink()
    agreement = doc["validation"]["fp32_vs_quant_top1_agreement"]
    if min_agreement is not None and agreement < min_agreement:
        err = QualityGateError(
            f"{out}: top-1 agreement with the fp32 model is {agreement:.4f}, under "
            f"--min-agreement {min_agreement}"
        )
        err.doc = doc  # type: ignore[attr-defined]
        raise err
    return doc


def _fine_tune(
    teacher, proto, images, quant, train, device, *, checkpoint, fingerprint, resume, progress
):
    from zerop_deploy.data import batch_fn
    from zerop_deploy.quant.calibrate import calibrate_activations, init_weight_scales
    from zerop_deploy.quant.qat import train as run_training
    from zerop_deploy.quant.student import build_student

    student, plan = build_student(teacher, proto, quant)
    if all(p.skipped for p in plan):
        raise InputError("the model has no layer to quantize (Conv, ConvTranspose, Gemm, MatMul)")
    _say(progress, f"{sum(not p.skipped for p in plan)} layers to quantize; calibrating step sizes")
    init_weight_scales(student)
    calib = images.train[: train.calib_images]
    calibrate_activations(student, [calib[i : i + 64] for i in range(0, len(calib), 64)])
    batches = batch_fn(
        images.train, train.batch_size, seed=train.seed, augment_images=train.augment
    )
    result = run_training(
        teacher,
        student,
        batches,
        train,
        device=device,
        checkpoint=checkpoint,
        fingerprint=fingerprint,
        resume=resume,
        progress=progress,
        feature_pairs=_feature_pairs(proto, plan),
    )
    return student.cpu().eval(), plan, result


def _feature_pairs(proto, plan) -> list[tuple[str, str]]:
    """Pair each quantized layer with the teacher module whose float output it reproduces.

    That is the teacher's BatchNorm for a folded Conv, else the teacher's own layer.
    """
    from zerop_deploy.quant.graph import module_node_names

    module_of = {node: module for module, node in module_node_names(proto).items()}
    return [
        (module_of[p.folded_bn] if p.folded_bn else p.module, p.module)
        for p in plan
        if p.skipped is None
    ]


def _report(src, out, quant, train, data, images, plan, result, device, wall) -> dict[str, Any]:
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
        "proxy": {
            "method": "path",
            "chosen": images.proxy_source,
            "ranking": [],
            "images": len(images.train),
            "holdout": len(images.holdout),
            "skipped_files": images.skipped,
        },
        "synthetic": {"images": 0, "sd_ratio": 0.0},
        "training": {
            "steps": result.steps,
            "wall_seconds": round(result.wall_seconds, 2),
            "images_per_second": round(result.images_per_second, 1),
            "final_loss": result.final_loss,
            "resumed_from_step": result.resumed_from,
            "total_seconds": round(wall, 2),
        },
        "layers": [
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
        ],
        "config": {"quant": quant.to_dict(), "train": train.to_dict(), "data": data.to_dict()},
        "versions": _versions(),
    }


def _validation(proto, qproto, student, images: _Images) -> dict[str, Any]:
    from zerop_deploy.validate import run_logits, top1_agreement

    x = images.eval if images.eval is not None else images.holdout
    if len(x) == 0:
        x = images.train[:256]
    xs = x.numpy()
    with torch.no_grad():
        student_logits = torch.cat([student(x[i : i + 256]) for i in range(0, len(x), 256)]).numpy()
    q = run_logits(qproto, xs)
    ref = run_logits(proto, xs)
    doc: dict[str, Any] = {
        "validation": {
            "images": len(xs),
            "source": "eval" if images.eval is not None else "proxy holdout",
            "ort_vs_student_top1_agreement": top1_agreement(q, student_logits),
            "fp32_vs_quant_top1_agreement": top1_agreement(q, ref),
            "max_abs_logit_diff": float(np.abs(q - ref).max()),
        }
    }
    if images.eval_labels is not None:
        labels = images.eval_labels
        doc["accuracy"] = {
            "fp32": float((ref.argmax(1) == labels).mean()),
            "quantized": float((q.argmax(1) == labels).mean()),
        }
    return doc
