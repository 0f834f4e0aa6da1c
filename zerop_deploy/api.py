"""The Python API: one verb per pipeline stage, each configured by frozen config objects.

``quantize(model, quant=QuantConfig(...), train=TrainConfig(...), data=DataConfig(...))`` reads the
model, converts it, builds and calibrates the fake-quantized student, fine-tunes it by distillation,
exports the QDQ model into the original graph, checks it in onnxruntime and writes the report.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from zerop_deploy._allocator import keep_freed_memory
from zerop_deploy._finetune import fine_tune
from zerop_deploy._report import add_layer_sqnr, header, training_section, validation
from zerop_deploy.config import DataConfig, QuantConfig, SynthConfig, TrainConfig
from zerop_deploy.deploy import DEFAULT_TARGET, check_target, target_section, to_target
from zerop_deploy.errors import ConfigError, InputError, QualityGateError
from zerop_deploy.fileio import (
    atomic_write_all,
    atomic_write_bytes,
    check_output_path,
    output_lock,
)
from zerop_deploy.preprocess import Preprocess

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


def _fingerprint(model: Path, quant: QuantConfig, train: TrainConfig, data: DataConfig) -> str:
    h = hashlib.sha256(model.read_bytes())
    t = {k: v for k, v in train.to_dict().items() if k not in ("device", "checkpoint_every_s")}
    h.update(json.dumps([quant.to_dict(), t, data.to_dict()], sort_keys=True, default=str).encode())
    return h.hexdigest()


def _say(progress: bool, message: str) -> None:
    """One progress line on stderr when it is a terminal (stdout stays free for --json)."""
    if progress and sys.stderr.isatty():
        print(f"zerop-deploy: {message}", file=sys.stderr, flush=True)


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
    plot_layers: str | os.PathLike[str] | None = None,
    progress: bool = True,
    target: str | None = None,
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
        plot_layers: Write a bar chart of every layer's output SQNR against the fp32 model
            (the report's ``layers[].output_sqnr_db``: which layers hurt most) to this PNG.
        progress: Show progress bars on stderr (only on a terminal).
        target: Deployment target of the written file (:data:`zerop_deploy.deploy.TARGETS`):
            ``qdq`` the exact student, ``ort-cpu`` onnxruntime's integer CPU kernels. None: the
            default, :data:`zerop_deploy.deploy.DEFAULT_TARGET`, or ``qdq`` for a model the
            preflight cannot write for it (the report's ``preflight.target_fallback`` says why).

    Returns:
        The report (also written as JSON).
    """
    quant, train, data = quant or QuantConfig(), train or TrainConfig(), data or DataConfig()
    if target is not None:
        check_target(target)
    src = Path(model)
    inputs = [src, *data.input_paths()]
    out = check_output_path(output or default_output(src, quant), inputs)
    with output_lock(out):  # a second run on this output is refused, never interleaved with it
        return _quantize_locked(
            src, out, inputs, quant, train, data, report=report, resume=resume,
            min_agreement=min_agreement, plot_layers=plot_layers, progress=progress, target=target,
        )  # fmt: skip


def _quantize_locked(
    src: Path,
    out: Path,
    inputs: list[Path],
    quant: QuantConfig,
    train: TrainConfig,
    data: DataConfig,
    *,
    report: str | os.PathLike[str] | None,
    resume: bool,
    min_agreement: float | None,
    plot_layers: str | os.PathLike[str] | None,
    progress: bool,
    target: str | None,
) -> dict[str, Any]:
    """The rest of :func:`quantize`, run while it holds the lock on its output."""
    rep = check_output_path(report or default_report(out), [*inputs, out])
    if plot_layers is not None:
        plot_layers = check_output_path(plot_layers, [*inputs, out, rep])
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise ConfigError(f"--min-agreement {min_agreement}: must be a fraction in [0, 1]")
    device = resolve_device(train.device)
    keep_freed_memory()  # big tensors are reallocated every step: no page-fault storm
    torch.manual_seed(train.seed)
    from zerop_deploy._preflight import preflight, preflight_images
    from zerop_deploy._proxy import Sources, calibration_images, check_images, proxy_data
    from zerop_deploy._synthetic import for_quantize
    from zerop_deploy.data import normalize
    from zerop_deploy.load import image_input_chw, load_model

    sources = Sources(data, train.seed)  # all opened and checked before any work
    sources(*(p for p in data.proxy if p not in ("auto", "none")), *data.candidates)
    if isinstance(data.synthetic, str):
        sources(data.synthetic)
    if data.eval is not None and sources(data.eval)[0].labels is None:
        raise InputError(
            f"{data.eval}: --eval needs labelled images (.npz 'labels' or class folders)"
        )
    say = functools.partial(_say, progress)
    say(f"reading and converting {src}")
    loaded = load_model(src)
    proto, teacher = loaded.proto, loaded.module
    chw = image_input_chw(proto, str(src))
    say("preflight: exporting a calibrated student and loading it in onnxruntime")
    with torch.random.fork_rng(devices=[]):  # the run's random stream stays as it was
        images = normalize(preflight_images(chw, train.seed), data.mean, data.std)
        checked = preflight(teacher, proto, quant, images, str(src),
                            target=target or DEFAULT_TARGET, default_target=target is None)
    target = checked["target"]
    if "target_fallback" in checked:
        say(f"{checked['target_fallback']}; writing target qdq")
    proxy = proxy_data(data, teacher, proto, chw, train.seed, sources, say, progress)
    say(f"{len(proxy.train)} proxy images for training, {len(proxy.holdout)} held back")
    synth_cache = out.with_name(out.name + ".synth.npz")
    proxy.synthetic, proxy.synthetic_section = for_quantize(
        teacher, proto, chw, data, train.seed, sources, device=device, cache_path=synth_cache,
        resume=resume, say=say, progress=progress,
    )  # fmt: skip
    ckpt = out.with_name(out.name + ".ckpt")
    t_start = time.monotonic()
    student, plan, result = fine_tune(
        teacher,
        proto,
        proxy,
        data,
        quant,
        train,
        device,
        checkpoint=ckpt,
        fingerprint=_fingerprint(src, quant, train, data),
        resume=resume,
        progress=progress,
        say=say,
    )
    from zerop_deploy.export import export_qdq, qdq_bytes
    from zerop_deploy.quant.qat import leave_process_group
    from zerop_deploy.quant.student import layer_quants
    from zerop_deploy.synth import cache_files
    from zerop_deploy.validate import compare_files

    rank, world = leave_process_group(device)
    if rank != 0:  # torchrun: rank 0 exports, validates and writes the report
        return {}

    say(f"exporting {out}")
    qproto = export_qdq(proto, layer_quants(student, plan, proto), int32_bias=True)
    if target != "qdq":
        say(f"writing it for target {target}")
        exact = qproto
        qproto = to_target(exact, target, normalize(calibration_images(proxy), data.mean,
                                                    data.std).numpy())  # fmt: skip
    files = [(out, qdq_bytes(qproto, out))]
    say("validating the exported model in onnxruntime")
    doc = header(src, out, quant, train, data, proxy, plan, device, proto)
    doc["training"] = training_section(result, time.monotonic() - t_start)
    doc["training"]["processes"] = world
    doc["preflight"] = checked
    doc["preprocess"] = data.preprocess.describe(chw)
    doc.update(validation(proto, qproto, student, proxy, data, chw, sources))
    doc["target"] = target_section(target, qproto)
    if target != "qdq":
        x = normalize(check_images(proxy), data.mean, data.std).numpy()
        doc["target"]["vs_qdq"] = compare_files(qproto, exact, x)
    add_layer_sqnr(doc, teacher.cpu().eval(), student, proto, plan, proxy, data)
    if plot_layers is not None:
        from zerop_deploy.plots import layer_chart

        files.append((plot_layers, layer_chart(doc["layers"], out.name)))
    files.append((rep, (json.dumps(doc, indent=2) + "\n").encode()))
    try:
        atomic_write_all(files)  # model, plot and report together, or none of them
    except InputError as e:
        raise InputError(
            f"{e}; nothing was written and the fine-tuned state is kept in {ckpt.name}: "
            "rerun the same command with --resume"
        ) from e
    ckpt.unlink(missing_ok=True)
    for f in cache_files(synth_cache):
        f.unlink(missing_ok=True)
    agreement = doc["validation"]["fp32_vs_quant_top1_agreement"]
    if min_agreement is not None and agreement < min_agreement:
        err = QualityGateError(
            f"{out}: top-1 agreement with the fp32 model is {agreement:.4f}, under "
            f"--min-agreement {min_agreement}"
        )
        err.doc = doc  # type: ignore[attr-defined]
        raise err
    return doc


def retarget(
    qmodel: str | os.PathLike[str],
    target: str,
    *,
    output: str | os.PathLike[str] | None = None,
    data: str = "builtin",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    preprocess: Preprocess | None = None,
) -> dict[str, Any]:
    """Write a ``quantize`` output for another deployment target, without fine-tuning again.

    Args:
        qmodel: A file written by ``quantize --target qdq``.
        target: The target (:data:`zerop_deploy.deploy.TARGETS`).
        output: Output path; default ``<qmodel stem>.<target>.onnx``.
        data: Images that calibrate what the student kept in float (half of them) and check the
            result against ``qmodel`` (the other half); the built-in pool by default.
        mean: Per-channel mean for graphs that do not normalise their input.
        std: Per-channel std.
        preprocess: How ``data`` images are fitted to the model input.

    Returns:
        ``{"input", "output", "target": {"name", "exact", "changes", "onnxruntime_kernels",
        "vs_qdq"}, "calibration_images", "seconds"}``.
    """
    from zerop_deploy.data import load_pool, normalize, open_source
    from zerop_deploy.deploy.retarget import CALIBRATION_IMAGES, default_output, retarget_model
    from zerop_deploy.load import image_input_chw, read_model

    src = Path(qmodel)
    out = check_output_path(output or default_output(src, target), [src])
    qproto = read_model(src)
    chw = image_input_chw(qproto, str(src))
    pool = load_pool(open_source(data, preprocess=preprocess), chw, limit=2 * CALIBRATION_IMAGES)
    images = normalize(pool.images, mean, std).numpy()
    with output_lock(out):
        model, doc = retarget_model(qproto, str(src), target, images)
        atomic_write_bytes(out, model.SerializeToString())
    return {"input": str(src), "output": str(out), **{k: v for k, v in doc.items() if k != "input"}}


def select_proxy(
    model: str | os.PathLike[str],
    candidates: list[str] | tuple[str, ...],
    *,
    samples: int = 1024,
    seed: int = 0,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    device: str = "auto",
    plot: str | os.PathLike[str] | None = None,
    progress: bool = True,
    preprocess: Preprocess | None = None,
) -> dict[str, Any]:
    """Rank candidate proxy sets by how close they come to the model's stored BN statistics.

    Args:
        model: The fp32 ``.onnx`` file.
        candidates: Image sources (folders, .npz, .npy, or "builtin").
        samples: Images drawn from each candidate.
        seed: Seed of the draw (and of the built-in pool).
        mean: Per-channel mean for graphs that do not normalise their input.
        std: Per-channel std.
        device: "auto", "cpu" or "cuda".
        plot: Write a bar chart of the ranking to this PNG.
        progress: One line per scored candidate on stderr (only on a terminal).
        preprocess: How candidate images are fitted to the model input.

    Returns:
        The ``select-proxy --json`` document (DESIGN.md): ``{"model", "method", "samples",
        "ranking": [{"candidate", "distance", "images", ...}]}``, best first. ``method`` is
        "output" for models without BatchNormalization statistics (BN folded into Conv).
    """
    from zerop_deploy._progress import bar
    from zerop_deploy._proxy import Sources
    from zerop_deploy.load import image_input_chw, load_model
    from zerop_deploy.stats import rank_candidates

    data = DataConfig(
        proxy="auto", candidates=tuple(candidates), samples=samples, mean=mean, std=std,
        preprocess=preprocess or Preprocess(),
    )  # fmt: skip
    if plot is not None:
        plot = check_output_path(plot, [Path(model), *map(Path, candidates)])
    sources = Sources(data, seed)(*data.candidates)
    loaded = load_model(model)
    chw = image_input_chw(loaded.proto, str(model))
    keep_freed_memory()
    teacher = loaded.module.to(resolve_device(device)).eval()
    with bar(len(sources), "scoring candidates", enabled=progress) as shown:
        method, ranking = rank_candidates(
            teacher, loaded.proto, sources, chw, samples=samples, seed=seed, mean=mean, std=std,
            on_done=lambda _row: shown.update(1),
        )  # fmt: skip
    doc: dict[str, Any] = {
        "model": str(model),
        "method": method,
        "samples": samples,
        "ranking": ranking,
        "preprocess": data.preprocess.describe(chw),
    }
    if method == "output":
        doc["note"] = (
            "the model has no BatchNormalization statistics (BN folded into Conv): candidates "
            "are scored from the model's outputs (confidence and class spread), a weaker signal"
        )
    if plot is not None:
        from zerop_deploy.plots import ranking_chart

        atomic_write_bytes(plot, ranking_chart(doc))
    return doc


def synthesize(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    cfg: SynthConfig | None = None,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    device: str = "auto",
    preview: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Make synthetic images that reproduce the model's BN statistics and save them as ``.npz``.

    The file holds ``images`` (uint8 N x H x W x C) and ``labels`` (the class each image was
    optimised towards), so it can be inspected, cached and used as ``--proxy OUT.npz``.

    Args:
        model: The fp32 ``.onnx`` file.
        output: The ``.npz`` to write (atomically).
        cfg: Synthesis settings.
        mean: Per-channel mean for graphs that do not normalise their input.
        std: Per-channel std.
        device: "auto", "cpu" or "cuda".
        preview: Write a contact sheet PNG of the first 128 images here.
        resume: Keep the batches a killed run finished (``OUT.npz.partial``).
        progress: A progress line per batch on stderr (only on a terminal).

    Returns:
        ``{"model", "output", "method", "images", "iterations", "seconds", "images_per_second",
        "bns_distance"}``; ``method`` is "output" when the model has no BN statistics.
    """
    cfg = cfg or SynthConfig()
    src = Path(model)
    out = check_output_path(output, [src])
    with output_lock(out):  # a second run on this output is refused, never interleaved with it
        return _synthesize_locked(src, out, cfg, mean, std, device, preview, resume, progress)


def _synthesize_locked(
    src: Path,
    out: Path,
    cfg: SynthConfig,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    device: str,
    preview: str | os.PathLike[str] | None,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    """The rest of :func:`synthesize`, run while it holds the lock on its output."""
    from zerop_deploy._synthetic import make, npz_bytes, summary
    from zerop_deploy.load import image_input_chw, load_model
    from zerop_deploy.quant.qat import leave_process_group
    from zerop_deploy.synth import cache_files

    if preview is not None:
        preview = check_output_path(preview, [src, out])
    dev = resolve_device(device)
    keep_freed_memory()
    loaded = load_model(src)
    chw = image_input_chw(loaded.proto, str(src))
    teacher = loaded.module.to(dev).eval()
    cache_path = out.with_name(out.name + ".partial")
    images, seconds, resumed = make(
        teacher, loaded.proto, chw, cfg, dev, mean=mean, std=std, cache_path=cache_path,
        resume=resume, progress=progress,
    )  # fmt: skip
    if leave_process_group(dev)[0] != 0:  # torchrun: rank 0 writes the file
        return {}
    doc = summary(teacher, loaded.proto, images, cfg, seconds, mean, std, resumed)
    atomic_write_bytes(out, npz_bytes(images, teacher, cfg, mean, std))
    if preview is not None:
        from zerop_deploy.plots import contact_sheet

        atomic_write_bytes(preview, contact_sheet(images[:128].numpy()))
    for f in cache_files(cache_path):
        f.unlink(missing_ok=True)
    return {"model": str(src), "output": str(out), **doc}
