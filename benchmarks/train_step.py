"""Fine-tuning throughput at 224 px: the loop with the native elementwise kernels and without.

Builds the W4A4 student of a model (first/last layers 8 bit), calibrates it on random 224-px
inputs, and runs the fine-tuning loop (``zerop_deploy.quant.loop.train``, feature loss on) on
random batches, once with the native kernels (LSQ fake-quantization ``kernels/core/lsq.cpp``, the
gradient of ReLU6-as-Clip ``clamp.cpp``, the feature loss ``feature_mse.cpp``) and once with their
torch formulations, alternated in rounds in one process. Reports the median images/s of each
and their ratio; random inputs, because the speed does not depend on the images.

    python benchmarks/train_step.py [--model MODEL]  (default: the folded EfficientNet-Lite0)
        [--batch-size 16] [--steps 4] [--rounds 3] [--write]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
from _common import SHARED, cpu_description, write_section

from zerop_deploy.config import QuantConfig, TrainConfig
from zerop_deploy.load.convert import convert_clip
from zerop_deploy.load.to_torch import image_input_chw, load_model
from zerop_deploy.quant import distill, native_lsq
from zerop_deploy.quant.calibrate import calibrate_activations, init_weight_scales
from zerop_deploy.quant.distill import feature_pairs
from zerop_deploy.quant.loop import train
from zerop_deploy.quant.memory import keep_freed_memory
from zerop_deploy.quant.student import build_student

DEFAULT = SHARED / "models" / "efficientnet_lite0_imagenet_folded.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=DEFAULT)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="steps per timed run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    loaded = load_model(args.model)
    teacher = loaded.module.eval()
    chw = image_input_chw(loaded.proto, str(args.model))
    student, plan = build_student(teacher, loaded.proto, QuantConfig(wbits=4, abits=4))
    student.eval()
    init_weight_scales(student)
    calibrate_activations(student, [torch.rand(16, *chw) * 4 - 2 for _ in range(2)])
    pairs = feature_pairs(loaded.proto, plan)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(args.batch_size, *chw, generator=gen) for _ in range(args.steps)]
    cfg = TrainConfig(steps=args.steps, checkpoint_every_s=1e9)
    rates: dict[str, list[float]] = {"native": [], "torch": []}
    for rnd in range(-1, args.rounds):  # round -1 warms the allocator and oneDNN up, untimed
        for name in rates:
            native_lsq.ENABLED = convert_clip.NATIVE = distill.NATIVE = name == "native"
            s = copy.deepcopy(student)
            r = train(teacher, s, lambda i: batches[i], cfg, device=torch.device("cpu"),
                      progress=False, feature_pairs=pairs)  # fmt: skip
            if rnd < 0:
                continue
            rates[name].append(r.images_per_second)
            print(f"{name}: {r.images_per_second:.2f} images/s", flush=True)
    native, plain = (statistics.median(rates[k]) for k in ("native", "torch"))
    text = (
        f"`{args.model.name}`, W4A4 (first/last 8 bit), batch {args.batch_size}, {args.steps} "
        f"steps a run, {args.rounds} rounds alternated, {torch.get_num_threads()} threads on "
        f"{cpu_description()} "
        f"(`python benchmarks/train_step.py --batch-size {args.batch_size} --steps {args.steps} "
        f"--rounds {args.rounds} --write`):\n\n"
        "| elementwise steps | images/s (median) | runs |\n|---|---|---|\n"
        f"| native kernels (LSQ, ReLU6 gradient, feature loss) | {native:.2f} | "
        f"{', '.join(f'{v:.2f}' for v in rates['native'])} |\n"
        f"| torch ops | {plain:.2f} | {', '.join(f'{v:.2f}' for v in rates['torch'])} |\n\n"
        f"Native / torch: **{native / plain:.2f}x**."
    )
    print(text)
    if args.write:
        write_section("train-step", "Fine-tuning throughput at 224 px", text)


if __name__ == "__main__":
    main()
