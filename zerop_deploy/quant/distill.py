"""What the student is taught: the distillation loss and the matched layer outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zerop_deploy.quant.graph import module_node_names


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


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
            # reduced in place over all but the batch axis: flatten(1) would copy every
            # channels_last output (and its gradient); mse_loss is one pass where - and pow are two
            dims = tuple(range(1, t.dim()))
            err = F.mse_loss(s, t, reduction="none").mean(dims)
            terms.append((err / (t.pow(2).mean(dims) + 1e-8)).mean())
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
