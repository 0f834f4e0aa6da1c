"""``quantize``: the whole pipeline, from the fp32 file to the validated low-bit file and report.

``quantize(model, quant=QuantConfig(...), train=TrainConfig(...), data=DataConfig(...))`` reads the
model, converts it, builds and calibrates the fake-quantized student, fine-tunes it by distillation,
exports the QDQ model into the original graph, checks it in onnxruntime and writes the report.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zerop_deploy.api.common import default_output, default_report, fingerprint, resolve_device, say
from zerop_deploy.api.finetune import fine_tune
from zerop_deploy.api.preflight import preflight, preflight_images
from zerop_deploy.config import DataConfig, QuantConfig, RunConfig, TrainConfig
from zerop_deploy.errors import InputError
from zerop_deploy.export.qdq import export_qdq, qdq_bytes
from zerop_deploy.export.targets import DEFAULT_TARGET, target_section, to_target
from zerop_deploy.io import (
    atomic_write_all,
    check_output_path,
    output_lock,
)
from zerop_deploy.load.to_torch import image_input_chw, load_model
from zerop_deploy.plots import layer_chart
from zerop_deploy.proxy.select import Sources, calibration_images, check_images, proxy_data
from zerop_deploy.quant.distributed import leave_process_group
from zerop_deploy.quant.memory import keep_freed_memory
from zerop_deploy.quant.student import layer_quants
from zerop_deploy.synth.for_quantize import for_quantize
from zerop_deploy.synth.synthesize import cache_files
from zerop_deploy.validate.compare import check_gate, compare_files
from zerop_deploy.validate.report import add_layer_sqnr, header, training_section, validation


def quantize(
    model: str | os.PathLike[str],
    quant: QuantConfig | None = None,
    train: TrainConfig | None = None,
    data: DataConfig | None = None,
    run: RunConfig | None = None,
) -> dict[str, Any]:
    """Quantize an ONNX model with distillation on proxy data and export it as a QDQ ONNX model.

    Args:
        model: The fp32 ``.onnx`` file (never modified).
        quant: Bit widths and layer choices.
        train: Fine-tuning settings.
        data: Proxy and evaluation images, and how they become model inputs.
        run: Outputs, resume, the quality gate, progress and the deployment target.

    Returns:
        The report (also written as JSON).

    Raises:
        QualityGateError: The agreement is under ``run.min_agreement`` (exit 1); the outputs are
            written and the report is the error's ``doc``.
    """
    quant, train, data = quant or QuantConfig(), train or TrainConfig(), data or DataConfig()
    run = run or RunConfig()
    src = Path(model)
    inputs = [src, *data.input_paths()]
    out = check_output_path(run.output or default_output(src, quant), inputs)
    with output_lock(out):  # a second run on this output is refused, never interleaved with it
        rep = check_output_path(run.report or default_report(out), [*inputs, out])
        plot = None if run.plot_layers is None else check_output_path(
            run.plot_layers, [*inputs, out, rep]
        )  # fmt: skip
        return _quantize_locked(
            _Run(src, out, rep, plot, quant, train, data, run, functools.partial(say, run.progress))
        )


@dataclass
class _Run:
    """What the phases of one quantize run share: its paths and settings."""

    src: Path
    out: Path
    report: Path
    plot: Path | None
    quant: QuantConfig
    train: TrainConfig
    data: DataConfig
    run: RunConfig
    say: Callable[[str], None]

    @property
    def checkpoint(self) -> Path:
        return self.out.with_name(self.out.name + ".ckpt")

    @property
    def synth_cache(self) -> Path:
        return self.out.with_name(self.out.name + ".synth.npz")


def _quantize_locked(r: _Run) -> dict[str, Any]:
    """The rest of :func:`quantize`, run while it holds the lock on its output."""
    device = resolve_device(r.train.device)
    keep_freed_memory()  # big tensors are reallocated every step: no page-fault storm
    torch.manual_seed(r.train.seed)
    sources = _open_sources(r.data, r.train.seed)
    r.say(f"reading and converting {r.src}")
    loaded = load_model(r.src)
    proto, teacher = loaded.proto, loaded.module
    chw = image_input_chw(proto, str(r.src))
    checked = _preflight(r, teacher, proto, chw)
    proxy = proxy_data(r.data, teacher, proto, chw, r.train.seed, sources, r.say, r.run.progress)
    r.say(f"{len(proxy.train)} proxy images for training, {len(proxy.holdout)} held back")
    proxy.synthetic, proxy.synthetic_section = for_quantize(
        teacher, proto, chw, r.data, r.train.seed, sources, device=device,
        cache_path=r.synth_cache, resume=r.run.resume, say=r.say, progress=r.run.progress,
    )  # fmt: skip
    t_start = time.monotonic()
    student, plan, result, calibration = fine_tune(
        teacher, proto, proxy, r.data, r.quant, r.train, device, checkpoint=r.checkpoint,
        fingerprint=fingerprint(r.src, r.quant, r.train, r.data), resume=r.run.resume,
        progress=r.run.progress, say=r.say,
    )  # fmt: skip
    rank, world = leave_process_group(device)
    if rank != 0:  # torchrun: rank 0 exports, validates and writes the report
        return {}
    r.say(f"exporting {r.out}")
    exact = export_qdq(proto, layer_quants(student, plan, proto), int32_bias=True)
    target = checked["target"]
    qproto = exact
    if target != "qdq":
        r.say(f"writing it for target {target}")
        qproto = to_target(
            exact, target, r.data.preprocess.to_input(calibration_images(proxy)).numpy()
        )
    r.say("validating the exported model in onnxruntime")
    doc = header(r.src, r.out, r.quant, r.train, r.data, proxy, plan, device, proto)
    doc["training"] = training_section(result, time.monotonic() - t_start)
    doc["training"]["processes"] = world
    doc["calibration"] = calibration
    doc["preflight"] = checked
    doc["preprocess"] = r.data.preprocess.describe(chw)
    doc.update(validation(proto, qproto, student, proxy, r.data, chw, sources))
    doc["target"] = target_section(target, qproto)
    if target != "qdq":
        x = r.data.preprocess.to_input(check_images(proxy)).numpy()
        doc["target"]["vs_qdq"] = compare_files(qproto, exact, x)
    add_layer_sqnr(doc, teacher.cpu().eval(), student, proto, plan, proxy, r.data)
    _write(r, qproto, doc)
    check_gate(doc, doc["validation"]["fp32_vs_quant_top1_agreement"], r.run.min_agreement,
               f"{r.out}: top-1 agreement with the fp32 model")  # fmt: skip
    return doc


def _open_sources(data: DataConfig, seed: int) -> Sources:
    """Open and check every image source of the run before any work."""
    sources = Sources(data, seed)
    sources(*(p for p in data.proxy if p not in ("auto", "none")), *data.candidates)
    if isinstance(data.synthetic, str):
        sources(data.synthetic)
    if data.eval is not None and sources(data.eval)[0].labels is None:
        raise InputError(
            f"{data.eval}: --eval needs labelled images (.npz 'labels' or class folders)"
        )
    return sources


def _preflight(r: _Run, teacher, proto, chw) -> dict[str, Any]:
    """Export and load a calibrated student first: an export problem costs seconds, not a run."""
    r.say("preflight: exporting a calibrated student and loading it in onnxruntime")
    with torch.random.fork_rng(devices=[]):  # the run's random stream stays as it was
        images = r.data.preprocess.to_input(preflight_images(chw, r.train.seed))
        checked = preflight(teacher, proto, r.quant, images, str(r.src),
                            target=r.run.target or DEFAULT_TARGET,
                            default_target=r.run.target is None)  # fmt: skip
    if "target_fallback" in checked:
        r.say(f"{checked['target_fallback']}; writing target qdq")
    return checked


def _write(r: _Run, qproto, doc: dict[str, Any]) -> None:
    """Model, plot and report together, or none of them; then the run's temporary files go."""
    files = [(r.out, qdq_bytes(qproto, r.out))]
    if r.plot is not None:
        files.append((r.plot, layer_chart(doc["layers"], r.out.name)))
    files.append((r.report, (json.dumps(doc, indent=2) + "\n").encode()))
    try:
        atomic_write_all(files)
    except InputError as e:
        raise InputError(
            f"{e}; nothing was written and the fine-tuned state is kept in {r.checkpoint.name}: "
            "rerun the same command with --resume"
        ) from e
    r.checkpoint.unlink(missing_ok=True)
    for f in cache_files(r.synth_cache):
        f.unlink(missing_ok=True)
