"""What the student is taught: the distillation loss and the matched layer outputs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zerop_deploy.native_tensors import as_array, dense_cpu_float, library, like
from zerop_deploy.quant.graph import module_node_names


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


NATIVE = True
"""Compute the feature loss with the native kernels when they are built (tests turn it off)."""


def image_mse(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, ``mean((s - t)^2)`` (with its gradient to ``s``) and ``mean(t^2)`` (none).

    Dense float32 CPU outputs take the native kernels (``kernels/core/feature_mse.cpp``): one
    pass forward and one backward, sums in double; other tensors are reduced by torch, in place
    over all but the batch axis (flatten(1) would copy every channels_last output and its
    gradient).
    """
    if (
        NATIVE
        and not t.requires_grad
        and s.shape == t.shape
        and s.dim() > 1
        and dense_cpu_float(s)
        and t.dtype == s.dtype
        and t.device == s.device
        and library("feature_mse_forward") is not None
    ):
        return _ImageMse.apply(s, like(s, t))
    dims = tuple(range(1, t.dim()))
    return F.mse_loss(s, t, reduction="none").mean(dims), t.pow(2).mean(dims)


class _ImageMse(torch.autograd.Function):
    """:func:`image_mse` on the native kernels; ``t`` is in ``s``'s memory order."""

    @staticmethod
    def forward(ctx, s, t):  # type: ignore[override]
        images, per = s.shape[0], s.numel() // s.shape[0]
        err, power = np.empty(images), np.empty(images)
        library("feature_mse_forward").feature_mse_forward(  # type: ignore[union-attr]
            as_array(s), as_array(t), images, err, power, torch.get_num_threads(), "auto"
        )
        ctx.save_for_backward(s, t)
        power_t = torch.from_numpy(power / per).float()
        ctx.mark_non_differentiable(power_t)
        return torch.from_numpy(err / per).float(), power_t

    @staticmethod
    def backward(ctx, grad_err, _grad_power):  # type: ignore[override]
        s, t = ctx.saved_tensors
        if grad_err is None:
            return None, None
        images, per = s.shape[0], s.numel() // s.shape[0]
        coef = (grad_err.double() * (2.0 / per)).float().contiguous().numpy()
        grad_s = torch.empty_like(s)
        library("feature_mse_backward").feature_mse_backward(  # type: ignore[union-attr]
            as_array(s),
            as_array(t),
            images,
            coef,
            as_array(grad_s),
            torch.get_num_threads(),
            "auto",
        )
        return grad_s, None


class FeatureTaps:
    """Forward hooks that keep the outputs of matched teacher/student modules for one step."""

    def __init__(self, teacher: nn.Module, student: nn.Module, pairs: list[tuple[str, str]]):
        self.teacher: dict[str, torch.Tensor] = {}
        self.student: dict[str, torch.Tensor] = {}
        self.pairs = pairs
        # layers rescaled by cross-layer equalization output the teacher's values / divisor
        self.divisors = {
            s: getattr(student.get_submodule(s), "channel_divisor", None) for _, s in pairs
        }
        self.handles = []
        for t_name, s_name in pairs:
            self.handles.append(
                teacher.get_submodule(t_name).register_forward_hook(
                    lambda _m, _i, out, k=t_name: self.teacher.__setitem__(k, out)
                )
            )
            self.handles.append(
                student.get_submodule(s_name).register_forward_hook(
                    lambda _m, _i, out, k=s_name: self.student.__setitem__(k, out)
                )
            )

    def loss(self) -> torch.Tensor | None:
        """Mean over pairs and images of ``MSE(student, teacher) / mean(teacher^2)``, per image.

        Normalising per image keeps the loss a plain mean over the batch, so torchrun's shards
        average to exactly the single-process loss. None without pairs.
        """
        if not self.pairs:
            return None
        terms = []
        for t_name, s_name in self.pairs:
            t, s = self.outputs(t_name, s_name)
            err, power = image_mse(s, t)
            terms.append((err / (power + 1e-8)).mean())
        return torch.stack(terms).mean()

    def outputs(self, t_name: str, s_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The recorded ``(teacher, student)`` outputs of one pair, on the same scale."""
        t, s = self.teacher.pop(t_name), self.student.pop(s_name)
        d = self.divisors.get(s_name)
        if d is not None:
            t = t / d.to(t.device).view(1, -1, *([1] * (t.dim() - 2)))
        return t, s

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self.handles:
            h.remove()


def feature_pairs(proto, plan) -> list[tuple[str, str]]:
    """Pair each quantized layer with the teacher module whose float output it reproduces.

    That is the teacher's BatchNorm for a folded Conv, else the teacher's own layer.
    """
    module_of = {node: module for module, node in module_node_names(proto).items()}
    return [
        (module_of[p.folded_bn] if p.folded_bn else p.module, p.module)
        for p in plan
        if p.skipped is None
    ]
