"""Figures as PNG bytes (written atomically by the caller): proxy rankings and image sheets."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def ranking_chart(doc: dict[str, Any]) -> bytes:
    """A horizontal bar chart of a ``select-proxy`` document, best candidate on top."""
    plt = _pyplot()
    rows = doc["ranking"]
    names = [Path(r["candidate"]).name for r in rows]
    values = [r["distance"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4), dpi=110)
    colors = ["#2a7ab9"] + ["#9bbbd6"] * (len(rows) - 1)
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    label = "BNS distance" if doc["method"] == "bns" else "output score (no BN statistics)"
    ax.set_xlabel(f"{label}, lower is closer ({doc['samples']} images per candidate)")
    ax.set_title(Path(doc["model"]).name, fontsize=10)
    ax.set_xlim(0, max(values) * 1.18 if values and max(values) > 0 else 1)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def contact_sheet(images: np.ndarray, *, columns: int = 16, scale: int = 2) -> bytes:
    """A grid of uint8 N x C x H x W (or N x H x W x C) images as PNG bytes, nearest upscaled."""
    from PIL import Image

    x = np.asarray(images)
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    n, h, w, _ = x.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    sheet = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        sheet[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = x[i]
    img = Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), 0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def layer_chart(layers: list[dict[str, Any]], title: str) -> bytes:
    """Output SQNR per quantized layer (the report's ``output_sqnr_db``), in graph order."""
    plt = _pyplot()
    rows = [r for r in layers if r.get("output_sqnr_db") is not None]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(rows) + 2), 4.2), dpi=110)
    values = [r["output_sqnr_db"] for r in rows]
    drops = [0.0] + [max(0.0, a - b) for a, b in zip(values, values[1:], strict=False)]
    worst = set(np.argsort(drops)[-3:]) if len(rows) > 3 else set()
    colors = ["#c0392b" if i in worst else "#2a7ab9" for i in range(len(rows))]
    ax.bar(range(len(rows)), values, color=colors)
    ax.set_xticks(range(len(rows)), [f"{r['node']} ({r['wbits']}/{r['abits']})" for r in rows],
                  rotation=90, fontsize=6)  # fmt: skip
    ax.set_ylabel("output SQNR vs fp32 (dB)")
    ax.set_title(f"{title}: red = the 3 largest drops from the previous layer", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
