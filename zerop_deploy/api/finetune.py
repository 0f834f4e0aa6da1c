"""The fine-tuning stage of quantize: build the student, calibrate it, distil into it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from zerop_deploy.data.batches import batch_fn
from zerop_deploy.quant.bias_correction import correct_biases
from zerop_deploy.quant.calibrate import calibrate_activations, init_weight_scales
from zerop_deploy.quant.distill import feature_pairs
from zerop_deploy.quant.equalize import equalization_pairs, equalize
from zerop_deploy.quant.loop import train as run_training
from zerop_deploy.quant.student import build_student


def fine_tune(
    teacher,
    proto,
    proxy,
    data,
    quant,
    train,
    device,
    *,
    checkpoint,
    fingerprint,
    resume,
    progress,
    say: Callable[[str], None] = lambda _m: None,
):
    """Build the student, equalize (if asked), calibrate it, correct its biases, distil into it.

    Returns:
        ``(student on the CPU in eval mode, layer plan, TrainResult, calibration section of the
        report)``.
    """
    # calibration runs on the CPU; synthesis may have left the teacher on the GPU (train moves both)
    # a model with no layer to quantize never gets here: quantize's preflight refuses it
    student, plan = build_student(teacher.cpu(), proto, quant)
    say(f"{sum(not p.skipped for p in plan)} layers to quantize; calibrating step sizes")
    n_sd = round(train.calib_images * proxy.synthetic_section["sd_ratio"])
    mix = torch.cat([proxy.train[: train.calib_images - n_sd], proxy.synthetic[:n_sd]])
    calib = data.preprocess.to_input(mix)
    calib_batches = [calib[i : i + 64] for i in range(0, len(calib), 64)]
    if quant.equalize:
        equalize(student, equalization_pairs(proto, plan), calib_batches)
    init_weight_scales(student)
    calibrate_activations(student, calib_batches)
    pairs = feature_pairs(proto, plan)
    calibration = {"images": len(calib), "bias_correction": None}
    if quant.bias_correction:
        say("correcting biases to the fp32 model's channel means")
        calibration["bias_correction"] = correct_biases(
            teacher.eval(), student.eval(), pairs, calib_batches
        )
    batches = batch_fn(
        proxy.train,
        train.batch_size,
        seed=train.seed,
        augment_images=train.augment,
        synthetic=proxy.synthetic,
        sd_ratio=proxy.synthetic_section["sd_ratio"],
        preprocess=data.preprocess,
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
        feature_pairs=pairs,
    )
    return student.cpu().eval(), plan, result, calibration
