"""The proxy images quantize trains on: given sources, the built-in pool, or the best candidate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from torch import nn

from zerop_deploy.config import DataConfig


@dataclass
class ProxyData:
    """Training and hold-out proxy images (uint8 at the model's input size) and their report."""

    train: torch.Tensor
    holdout: torch.Tensor
    section: dict[str, Any]
    synthetic: torch.Tensor | None = None  # uint8, set by quantize when --synthetic N
    synthetic_section: dict[str, Any] = field(default_factory=dict)


def open_sources(paths: tuple[str, ...], data: DataConfig, seed: int) -> list:
    """Open (and so validate) every source before any work is done."""
    from zerop_deploy.data import open_source

    return [open_source(p, builtin_images=data.builtin_images, seed=seed) for p in paths]


def proxy_data(
    data: DataConfig,
    teacher: nn.Module,
    proto: onnx.ModelProto,
    chw: tuple[int, int, int],
    seed: int,
    say: Callable[[str], None] = lambda _m: None,
) -> ProxyData:
    """Resolve ``data.proxy`` into images, ranking ``data.candidates`` first for ``"auto"``.

    At most ``data.proxy_images`` images and ``data.max_pool_bytes`` bytes are held (sampled at
    random, evenly over the sources); ``data.holdout`` of them (at most 1,000) are kept back for
    validation.
    """
    from zerop_deploy.data import load_pool
    from zerop_deploy.stats import rank_candidates

    section: dict[str, Any] = {"method": "path", "ranking": []}
    if data.proxy == ("none",):
        empty = torch.empty(0, *chw, dtype=torch.uint8)
        return ProxyData(empty, empty, {**section, "method": "none", "chosen": None, "images": 0})
    if data.proxy == ("auto",):
        candidates = open_sources(data.candidates, data, seed)
        say(f"ranking {len(candidates)} proxy candidates on {data.samples} images each")
        method, ranking = rank_candidates(
            teacher, proto, candidates, chw, samples=data.samples, seed=seed,
            mean=data.mean, std=data.std,
        )  # fmt: skip
        best = next(s for s in candidates if s.name == ranking[0]["candidate"])
        sources, section = [best], {"method": method, "ranking": ranking}
    else:
        sources = open_sources(data.proxy, data, seed)
        if data.proxy == ("builtin",):
            section["method"] = "builtin"
    wanted = data.max_pool_bytes // (chw[0] * chw[1] * chw[2])
    if data.proxy_images is not None:
        wanted = min(wanted, data.proxy_images)
    per_source = max(1, wanted // len(sources))
    pools = [load_pool(s, chw, limit=per_source, seed=seed) for s in sources]
    x = torch.cat([p.images for p in pools])
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_hold = min(1000, int(len(x) * data.holdout))
    section.update(
        chosen=", ".join(s.name for s in sources),
        images=len(x) - n_hold,
        holdout=n_hold,
        total_images=sum(s.count for s in sources),
        skipped_files=sum(p.skipped for p in pools),
    )
    return ProxyData(x[perm[n_hold:]], x[perm[:n_hold]], section)
