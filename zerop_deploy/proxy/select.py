"""The proxy images quantize trains on: given sources, the built-in pool, or the best candidate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from zerop_deploy.config import DataConfig
from zerop_deploy.data.sources import load_pool, open_source
from zerop_deploy.errors import InputError
from zerop_deploy.progress import bar
from zerop_deploy.proxy.stats import module_device, rank_candidates
from zerop_deploy.quant.finite import all_finite, nonfinite_error, onnx_nodes


@dataclass
class ProxyData:
    """Training and hold-out proxy images (uint8 at the model's input size) and their report."""

    train: torch.Tensor
    holdout: torch.Tensor
    section: dict[str, Any]
    synthetic: torch.Tensor | None = None  # uint8, set by quantize when --synthetic N
    synthetic_section: dict[str, Any] = field(default_factory=dict)


class Sources:
    """The image sources of one run, each opened (and so checked) once.

    A run opens all of them before any work, so bad input fails fast, and every stage then
    gets the same opened source (a big folder is listed once).
    """

    def __init__(self, data: DataConfig, seed: int) -> None:
        self._data, self._seed = data, seed
        self._opened: dict[str, Any] = {}

    def __call__(self, *paths: str) -> list:
        """The opened sources of ``paths`` (:class:`zerop_deploy.data.sources.ImageSource`)."""
        for p in paths:
            if p not in self._opened:
                self._opened[p] = open_source(
                    p, builtin_images=self._data.builtin_images, seed=self._seed,
                    preprocess=self._data.preprocess,
                )  # fmt: skip
        return [self._opened[p] for p in paths]


def proxy_data(
    data: DataConfig,
    teacher: nn.Module,
    proto: onnx.ModelProto,
    chw: tuple[int, int, int],
    seed: int,
    sources: Sources,
    say: Callable[[str], None] = lambda _m: None,
    progress: bool = False,
) -> ProxyData:
    """Resolve ``data.proxy`` into images, ranking ``data.candidates`` first for ``"auto"``.

    ``progress`` shows a bar over the candidates while they are scored (terminal only).

    At most ``data.proxy_images`` images are used (sampled at random, evenly over the sources);
    up to ``data.max_pool_bytes`` they are read once and held, beyond that they are streamed
    (:class:`StreamedImages`). ``data.holdout`` of them (at most 1,000) are kept back for
    validation.
    """
    section: dict[str, Any] = {"method": "path", "ranking": []}
    if data.proxy == ("none",):
        empty = torch.empty(0, *chw, dtype=torch.uint8)
        return ProxyData(empty, empty, {**section, "method": "none", "chosen": None, "images": 0})
    if data.proxy == ("auto",):
        candidates = sources(*data.candidates)
        say(f"ranking {len(candidates)} proxy candidates on {data.samples} images each")
        with bar(len(candidates), "scoring candidates", enabled=progress) as shown:
            method, ranking = rank_candidates(
                teacher, proto, candidates, chw, samples=data.samples, seed=seed,
                preprocess=data.preprocess, on_done=lambda _row: shown.update(1),
            )  # fmt: skip
        best = next(s for s in candidates if s.name == ranking[0]["candidate"])
        chosen, section = [best], {"method": method, "ranking": ranking}
    else:
        chosen = sources(*data.proxy)
        if data.proxy == ("builtin",):
            section["method"] = "builtin"
    per_image = chw[0] * chw[1] * chw[2]
    counts = [s.count for s in chosen]
    if data.proxy_images is not None:
        counts = [min(c, max(1, data.proxy_images // len(chosen))) for c in counts]
    section.update(
        chosen=", ".join(s.name for s in chosen), total_images=sum(s.count for s in chosen)
    )
    if sum(counts) * per_image > data.max_pool_bytes:
        proxy = _streamed(chosen, counts, chw, data, seed, section)
        _check_finite(teacher, proto, proxy.train[:16], data)
        return proxy
    pools = [load_pool(s, chw, limit=c, seed=seed) for s, c in zip(chosen, counts, strict=True)]
    x = torch.cat([p.images for p in pools])
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_hold = min(1000, int(len(x) * data.holdout))
    section.update(
        images=len(x) - n_hold,
        holdout=n_hold,
        skipped_files=sum(p.skipped for p in pools),
        streamed=False,
    )
    _check_finite(teacher, proto, x[perm[n_hold:]][:16], data)
    return ProxyData(x[perm[n_hold:]], x[perm[:n_hold]], section)


def _check_finite(teacher: nn.Module, proto: onnx.ModelProto, images, data: DataConfig) -> None:
    """Refuse a model that computes NaN or Inf on the first proxy images, before any long work.

    Raises:
        InputError: Naming the first ONNX node whose output is not finite
            (:func:`zerop_deploy.quant.finite.nonfinite_error`).
    """
    if not len(images):
        return
    x = data.preprocess.to_input(images).to(module_device(teacher))
    with torch.no_grad():
        y = teacher(x)
    if not all_finite(y):
        nodes = onnx_nodes(proto)
        raise nonfinite_error(teacher, x, what=f"{len(x)} proxy images", nodes=nodes)


class StreamedImages:
    """Training images read from their sources whenever a batch needs them.

    Used when the proxy images would take more than ``max_pool_bytes`` at the model's input size:
    memory then stays flat however many images the sources hold. Indexing (an index tensor or a
    slice) returns uint8 ``N x C x H x W``; an unreadable file is replaced by a readable image of
    the same batch, so a batch is still a function of its indices (resumable).
    """

    def __init__(self, sources: list, positions: np.ndarray, chw: tuple[int, int, int]):
        self.sources = sources
        self.positions = positions  # [N, 2]: (source number, index in the source)
        self.chw = chw

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key) -> torch.Tensor:
        picks = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        rows = self.positions[picks.reshape(-1)]
        out = torch.empty((len(rows), *self.chw), dtype=torch.uint8)
        ok = np.zeros(len(rows), bool)
        for k, src in enumerate(self.sources):
            where = np.nonzero(rows[:, 0] == k)[0]
            if len(where):
                images, read = src.read(rows[where, 1], self.chw)
                at = where[_read_mask(rows[where, 1], read)]
                out[at], ok[at] = images, True
        if len(rows) and not ok.any():
            raise InputError(f"{self.sources[0].name}: a whole batch of images was unreadable")
        if not ok.all():  # replace unreadable files by readable images of the same batch
            good = np.nonzero(ok)[0]
            bad = np.nonzero(~ok)[0]
            out[bad] = out[good[np.arange(len(bad)) % len(good)]]
        return out


def _read_mask(asked: np.ndarray, read: np.ndarray) -> np.ndarray:
    """Which of ``asked`` were read (``read`` is ``asked`` in order, minus unreadable files)."""
    mask = np.zeros(len(asked), bool)
    j = 0
    for i, a in enumerate(asked):
        if j < len(read) and read[j] == a:
            mask[i] = True
            j += 1
    return mask


def _streamed(sources, counts, chw, data: DataConfig, seed: int, section) -> ProxyData:
    rng = np.random.default_rng(seed)
    parts = [
        np.stack([np.full(c, k), np.sort(rng.permutation(s.count)[:c])], 1)
        for k, (s, c) in enumerate(zip(sources, counts, strict=True))
    ]
    positions = rng.permutation(np.concatenate(parts))
    n_hold = min(1000, int(len(positions) * data.holdout))
    pool = StreamedImages(sources, positions, chw)
    holdout = pool[slice(0, n_hold)]
    train = StreamedImages(sources, positions[n_hold:], chw)
    section.update(images=len(train), holdout=n_hold, skipped_files=None, streamed=True)
    return ProxyData(train, holdout, section)  # type: ignore[arg-type]


def calibration_images(proxy: ProxyData, n: int = 256) -> torch.Tensor:
    """Up to ``n`` training images (uint8) for a target's calibration: proxy, then synthetic."""
    parts = [p for p in (proxy.train, proxy.synthetic) if p is not None and len(p)]
    if not parts:
        raise InputError("no training images to calibrate the deployment target on")
    each = -(-n // len(parts))
    return torch.cat([p[:each] for p in parts])[:n]


def check_images(proxy: ProxyData, n: int = 256) -> torch.Tensor:
    """Up to ``n`` images to compare two exported files on: held-back ones when there are any."""
    return proxy.holdout[:n] if len(proxy.holdout) else calibration_images(proxy, n)
