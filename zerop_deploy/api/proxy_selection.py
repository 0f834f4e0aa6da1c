"""``select_proxy``: rank candidate proxy sets by their distance to the stored BN statistics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zerop_deploy.api.common import resolve_device
from zerop_deploy.config import DataConfig
from zerop_deploy.data.preprocess import Preprocess
from zerop_deploy.io import atomic_write_bytes, check_output_path
from zerop_deploy.load.to_torch import image_input_chw, load_model
from zerop_deploy.plots import ranking_chart
from zerop_deploy.progress import bar
from zerop_deploy.proxy.select import Sources
from zerop_deploy.proxy.stats import rank_candidates
from zerop_deploy.quant.memory import keep_freed_memory


def select_proxy(
    model: str | os.PathLike[str],
    candidates: list[str] | tuple[str, ...],
    *,
    samples: int = 1024,
    seed: int = 0,
    device: str = "auto",
    plot: str | os.PathLike[str] | None = None,
    progress: bool = True,
    preprocess: Preprocess | None = None,
) -> dict[str, Any]:
    """Rank candidate proxy sets by how close they come to the model's stored BN statistics.

    Args:
        model: The fp32 ``.onnx`` file.
        candidates: Image sources (folders, .npz, .npy, or "builtin").
        samples: Images drawn from each candidate.
        seed: Seed of the draw (and of the built-in pool).
        device: "auto", "cpu" or "cuda".
        plot: Write a bar chart of the ranking to this PNG.
        progress: One line per scored candidate on stderr (only on a terminal).
        preprocess: How candidate images become model inputs (geometry, ``--mean``/``--std``).

    Returns:
        The ``select-proxy --json`` document (DESIGN.md): ``{"model", "method", "samples",
        "ranking": [{"candidate", "distance", "images", ...}]}``, best first. ``method`` is
        "output" for models without BatchNormalization statistics (BN folded into Conv).
    """
    data = DataConfig(
        proxy="auto", candidates=tuple(candidates), samples=samples,
        preprocess=preprocess or Preprocess(),
    )  # fmt: skip
    if plot is not None:
        plot = check_output_path(plot, [Path(model), *map(Path, candidates)])
    sources = Sources(data, seed)(*data.candidates)
    loaded = load_model(model)
    chw = image_input_chw(loaded.proto, str(model))
    keep_freed_memory()
    teacher = loaded.module.to(resolve_device(device)).eval()
    with bar(len(sources), "scoring candidates", enabled=progress) as shown:
        method, ranking = rank_candidates(
            teacher, loaded.proto, sources, chw, samples=samples, seed=seed,
            preprocess=data.preprocess, on_done=lambda _row: shown.update(1),
        )  # fmt: skip
    doc: dict[str, Any] = {
        "model": str(model),
        "method": method,
        "samples": samples,
        "ranking": ranking,
        "preprocess": data.preprocess.describe(chw),
    }
    if method == "output":
        doc["note"] = (
            "the model has no BatchNormalization statistics (BN folded into Conv): candidates "
            "are scored from the model's outputs (confidence and class spread), a weaker signal"
        )
    if plot is not None:
        atomic_write_bytes(plot, ranking_chart(doc))
    return doc
