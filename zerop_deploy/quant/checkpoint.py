"""Checkpoints of the fine-tuning loop: written atomically, read back without unpickling objects."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from zerop_deploy.errors import InputError


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically write a checkpoint (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, fingerprint: str) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` for the same run settings.

    Raises:
        InputError: Unreadable file, or one written by a run with other settings.
    """
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols on stderr
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or crafted file
        # torch's own text suggests weights_only=False, which would run the file's code: not shown
        raise InputError(
            f"{path}: checkpoint cannot be read safely ({type(e).__name__}: damaged, or not "
            "written by zerop-deploy); delete it or drop --resume"
        ) from e
    if state.get("fingerprint") != fingerprint:
        raise InputError(
            f"{path}: checkpoint belongs to a run with other settings (model, bits, data, seed or "
            "steps); delete it or rerun with the same options"
        )
    return state
