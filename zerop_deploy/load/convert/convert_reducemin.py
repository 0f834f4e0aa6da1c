"""ReduceMin-18 (axes as an optional input), emitted by torch's default ONNX exporter."""

from __future__ import annotations

import torch

from zerop_deploy.load.convert._reduce18 import register_reduce18


def _reduce_min(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.amin(x, dim=dims, keepdim=keep)


register_reduce18("ReduceMin", _reduce_min, versions=(18,))
