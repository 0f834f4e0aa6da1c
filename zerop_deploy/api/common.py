"""What every verb of the API shares: default output names, the device, progress lines."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from zerop_deploy.config import DataConfig, QuantConfig, TrainConfig
from zerop_deploy.errors import ConfigError

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


def fingerprint(model: Path, quant: QuantConfig, train: TrainConfig, data: DataConfig) -> str:
    """What a checkpoint must match to be resumed: the model's bytes and the settings."""
    h = hashlib.sha256(model.read_bytes())
    t = {k: v for k, v in train.to_dict().items() if k not in ("device", "checkpoint_every_s")}
    h.update(json.dumps([quant.to_dict(), t, data.to_dict()], sort_keys=True, default=str).encode())
    return h.hexdigest()


def say(progress: bool, message: str) -> None:
    """One progress line on stderr when it is a terminal (stdout stays free for --json)."""
    if progress and sys.stderr.isatty():
        print(f"zerop-deploy: {message}", file=sys.stderr, flush=True)
