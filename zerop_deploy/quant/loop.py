"""The fine-tuning loop: distillation from the fp32 teacher into the fake-quantized student.

Every step draws a batch that depends only on ``(seed, step)`` (indices, crops and flips), so a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would have seen. The loss is
the KL divergence between the teacher's and the student's softened logits. Learning rates follow a
cosine decay over the planned steps (or over the time budget, whichever ends first).

Checkpoints (student weights and step sizes, optimizer state, step, elapsed time, a fingerprint
of the run's settings) are written atomically every ``checkpoint_every_s`` seconds and when the
loop is interrupted (Ctrl-C and SIGTERM wait for the running step to finish, so a checkpoint never
holds half a step); they are read back with ``torch.load(weights_only=True)``, never by
unpickling objects.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zerop_deploy.config import TrainConfig
from zerop_deploy.quant._interrupts import StepBoundary
from zerop_deploy.quant.checkpoint import load_checkpoint, save_checkpoint
from zerop_deploy.quant.distill import FeatureTaps, kd_loss
from zerop_deploy.quant.distributed import distributed_context
from zerop_deploy.quant.modules import ActQuantizer, QuantLayer

BatchFn = Callable[[int], torch.Tensor]
"""``batch(step) -> images``: the training images of one step, deterministic in ``step``."""


@dataclass(frozen=True)
class TrainResult:
    """What the loop did."""

    steps: int
    wall_seconds: float
    images_per_second: float
    final_loss: float
    resumed_from: int


REFERENCE_STEP = 0.05
"""The step size whose learning rate is ``lr * scale_lr_factor``: every other step size learns at a
rate proportional to its calibrated value (the 4-bit weight steps of the CIFAR networks are
0.02-0.05, where the rule changes little)."""


def param_groups(student: nn.Module, cfg: TrainConfig) -> list[dict]:
    """One Adam group per quantizer, so that every update is measured on its own grid.

    Adam moves every parameter by about its learning rate in the first steps, whatever the
    gradient, so one absolute rate cannot suit grids whose steps span three decades (Lite0's
    8-bit weight steps go down to 1e-5, its 4-bit ones up to 0.4):

    * a layer's weights and bias learn at ``lr / 2 ** (wbits - 4)``: an 8-bit layer's grid is 16
      times finer than a 4-bit one's, and so is its move;
    * its weight step sizes, and every activation step size, at ``lr * scale_lr_factor * s0 /``
      :data:`REFERENCE_STEP`, ``s0`` the calibrated step (the median over channels for weights):
      the same fraction of itself for every step size.

    Built after calibration (``s0`` is read from the student); the groups' order is the modules'.
    """
    groups = []

    def add(params: list, lr: float) -> None:
        groups.append({"params": params, "lr": lr, "base_lr": lr})

    scale_lr = cfg.lr * cfg.scale_lr_factor / REFERENCE_STEP
    for m in student.modules():
        if isinstance(m, QuantLayer):
            add([m.weight] + ([] if m.bias is None else [m.bias]), cfg.lr / 2 ** (m.wbits - 4))
            add([m.weight_scale], scale_lr * float(m.weight_scale.detach().abs().median()))
        elif isinstance(m, ActQuantizer):
            add([m.scale], scale_lr * float(m.scale.detach().abs()))
    return groups


def _trainable(student: nn.Module) -> None:
    for p in student.parameters():
        p.requires_grad_(False)
    for g in param_groups(student, TrainConfig()):
        for p in g["params"]:
            p.requires_grad_(True)


def train(
    teacher: nn.Module,
    student: nn.Module,
    batch: BatchFn,
    cfg: TrainConfig,
    *,
    device: torch.device,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    resume: bool = False,
    progress: bool = True,
    feature_pairs: list[tuple[str, str]] | None = None,
) -> TrainResult:
    """Fine-tune ``student`` to mimic ``teacher`` for ``cfg.steps`` steps or ``cfg.time_budget_s``.

    Args:
        teacher: fp32 model (eval mode, frozen).
        student: Calibrated fake-quantized model; trained in place.
        batch: Deterministic batch source.
        cfg: Steps, budget, learning rates, temperature, checkpoint interval.
        device: Where to train.
        checkpoint: Checkpoint file, or None for no checkpoints.
        fingerprint: Identity of the run's settings, stored in and checked against checkpoints.
        resume: Continue from ``checkpoint`` if it exists.
        progress: Show a progress bar on stderr.
        feature_pairs: ``(teacher module, student module)`` names whose outputs are matched when
            ``cfg.feature_weight`` > 0 (the teacher's BatchNorm output against the student's folded
            Conv, for instance).

    Returns:
        Steps done, wall time and throughput.
    """
    teacher.eval().to(device)
    # no BatchNorm is left in the student: eval mode keeps the converted modules deterministic
    student.eval().to(device)
    _trainable(student)
    # before DDP: it lays its gradient buckets out after the parameters' strides
    layout = _Layout(device, batch, teacher, student)
    rank, world = distributed_context(device)
    model: nn.Module = student
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device] if device.type == "cuda" else None
        model = DistributedDataParallel(student, device_ids=ids)

        def shard(step: int, _batch: BatchFn = batch) -> torch.Tensor:
            return _batch(step)[rank::world]

        batch = shard
    opt = torch.optim.Adam(param_groups(student, cfg))
    start_step, elapsed0 = 0, 0.0
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, fingerprint)
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        start_step, elapsed0 = int(state["step"]), float(state["elapsed"])

    def snapshot(step: int, elapsed: float) -> None:
        if checkpoint is not None and rank == 0:
            save_checkpoint(
                checkpoint,
                {
                    "student": student.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": step,
                    "elapsed": elapsed,
                    "fingerprint": fingerprint,
                },
            )

    taps = FeatureTaps(teacher, student, feature_pairs or [] if cfg.feature_weight > 0 else [])
    try:
        return _loop(
            teacher,
            model,
            batch,
            cfg,
            opt,
            device,
            start_step,
            elapsed0,
            snapshot,
            progress and rank == 0,
            taps,
            layout,
        )
    finally:
        taps.remove()
        layout.restore()


class _Layout:
    """channels_last (NHWC) memory for both networks and the batches while training on the CPU.

    oneDNN's NHWC convolutions, depthwise ones above all, run forward + backward about 1.8x
    faster than NCHW on the CPU (EfficientNet-Lite0 at 224 px, batch 16). The networks switch
    when the batches are 4-D, in place (parameters keep their identity, so the optimizer's state
    still matches), and return to the contiguous layout when training ends; values are unchanged.
    ``ZEROP_CHANNELS_LAST=0`` keeps NCHW.
    """

    def __init__(self, device: torch.device, batch: BatchFn, *modules: nn.Module) -> None:
        self.modules = modules
        self.active = False
        if device.type == "cpu" and os.environ.get("ZEROP_CHANNELS_LAST", "1") != "0":
            if batch(0).dim() == 4:
                self._convert(torch.channels_last)
                self.active = True

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the training layout."""
        if not self.active or x.dim() != 4:
            return x
        return x.contiguous(memory_format=torch.channels_last)

    def restore(self) -> None:
        """Back to the contiguous layout (export, evaluation and state dicts expect it)."""
        if self.active:
            self._convert(torch.contiguous_format)
            self.active = False

    def _convert(self, fmt: torch.memory_format) -> None:
        with torch.no_grad():
            for m in self.modules:
                for t in [*m.parameters(), *m.buffers()]:
                    if t.dim() == 4:
                        t.data = t.data.contiguous(memory_format=fmt)


def _lr_factor(step: int, steps: int, elapsed: float, budget: float | None) -> float:
    frac = step / max(1, steps)
    if budget:
        frac = max(frac, elapsed / budget)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


MICRO_BATCH_PIXELS = 16 * 224 * 224
"""Input pixels (images x height x width) of one forward + backward pass at most.

A bigger batch is split into micro-batches whose gradients add up before the one optimizer step:
the same update (every loss term is a mean over images, the student has no BatchNorm left and the
teacher runs in eval mode), but autograd holds the activations of 16 images at 224 x 224 instead
of the whole batch's. Small inputs (32 x 32) are never split. ``ZEROP_MICRO_BATCH_PIXELS``
overrides it (0: never split)."""


def _micro_batches(x: torch.Tensor) -> list[torch.Tensor]:
    """``x`` split along the batch into parts of at most :data:`MICRO_BATCH_PIXELS` pixels."""
    budget = int(os.environ.get("ZEROP_MICRO_BATCH_PIXELS", MICRO_BATCH_PIXELS))
    pixels = math.prod(x.shape[2:]) if x.dim() > 2 else 1
    if budget <= 0 or len(x) * pixels <= budget:
        return [x]
    return list(x.split(max(1, budget // pixels)))


def _step(teacher, student, x, cfg, opt, taps) -> tuple[int, float]:
    """One distillation step on images ``x``; returns the batch size and the loss."""
    parts = _micro_batches(x)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for i, part in enumerate(parts):
        # under DDP only the last part's backward averages the gradients across ranks
        last = i == len(parts) - 1
        no_sync = getattr(student, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with torch.no_grad():
                target = teacher(part)
            loss = kd_loss(student(part), target, cfg.temperature)
            features = taps.loss()
            if features is not None:
                loss = loss + cfg.feature_weight * features
            if len(parts) > 1:
                loss = loss * (len(part) / len(x))
            loss.backward()
        total += float(loss.detach())
    opt.step()
    return len(x), total


def _loop(
    teacher, student, batch, cfg, opt, device, step, elapsed0, snapshot, progress, taps, layout
):
    from tqdm import tqdm

    t0, last_ckpt, images, loss_val = time.monotonic(), time.monotonic(), 0, float("nan")
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        file=sys.stderr,
        unit="step",
        dynamic_ncols=True,
        disable=not progress or not sys.stderr.isatty(),
        desc="fine-tuning",
    )
    start, consistent = step, True  # consistent: weights and optimizer state belong to `step`
    try:
        with StepBoundary() as boundary:
            while step < cfg.steps:
                boundary.check()  # an interrupt that came during the last step stops here
                elapsed = elapsed0 + time.monotonic() - t0
                if cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s:
                    break
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * _lr_factor(step, cfg.steps, elapsed, cfg.time_budget_s)
                consistent = False
                n, loss_val = _step(
                    teacher, student, layout.batch(batch(step).to(device)), cfg, opt, taps
                )
                step, images, consistent = step + 1, images + n, True
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss_val:.4f}",
                    img_s=f"{images / max(1e-9, time.monotonic() - t0):.0f}",
                )
                if time.monotonic() - last_ckpt >= cfg.checkpoint_every_s:
                    snapshot(step, elapsed0 + time.monotonic() - t0)
                    last_ckpt = time.monotonic()
    except KeyboardInterrupt:
        if consistent:  # a second Ctrl-C mid-step keeps the last periodic checkpoint instead
            with contextlib.suppress(Exception):
                snapshot(step, elapsed0 + time.monotonic() - t0)
        raise
    finally:
        bar.close()
    wall = time.monotonic() - t0
    snapshot(step, elapsed0 + wall)
    return TrainResult(
        steps=step,
        wall_seconds=elapsed0 + wall,
        images_per_second=images / max(1e-9, wall),
        final_loss=loss_val,
        resumed_from=start,
    )
