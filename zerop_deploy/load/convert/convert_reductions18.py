"""ReduceL1/L2/LogSum/LogSumExp/Prod/SumSquare-18 (axes as an optional input).

Their opset-18 versions only moved ``axes`` from an attribute to an input, and onnx2torch registers
them only up to opset 13 (Swin-V2 at opset 20 normalises its attention queries and keys with
ReduceL2).
"""

from __future__ import annotations

import torch

from zerop_deploy.load.convert._reduce18 import register_reduce18


def _l1(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return x.abs().sum(dim=dims, keepdim=keep)


def _l2(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    # vector_norm's gradient at an all-zero row is 0; sqrt(sum(x^2)) gives inf * 0 = NaN there
    # (Swin-V2's zero-padded attention windows), which fine-tuning then spreads to every weight
    return torch.linalg.vector_norm(x, ord=2, dim=dims, keepdim=keep)


def _log_sum(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return x.sum(dim=dims, keepdim=keep).log()


def _log_sum_exp(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return torch.logsumexp(x, dim=dims, keepdim=keep)


def _prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = x.prod(dim=d, keepdim=keep)
    return x


def _sum_square(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return x.square().sum(dim=dims, keepdim=keep)


for _op, _fn in (("ReduceL1", _l1), ("ReduceL2", _l2), ("ReduceLogSum", _log_sum),
                 ("ReduceLogSumExp", _log_sum_exp), ("ReduceProd", _prod),
                 ("ReduceSumSquare", _sum_square)):  # fmt: skip
    register_reduce18(_op, _fn, versions=(18,))
