"""The verbs that read finished files: ``inspect``, ``validate`` and ``bench``."""

from __future__ import annotations

import os
from typing import Any

from zerop_deploy.bench.tables import bench
from zerop_deploy.data.preprocess import Preprocess
from zerop_deploy.data.sources import load_pool, open_source
from zerop_deploy.load.read import read_model
from zerop_deploy.load.summary import inspect_model as inspect
from zerop_deploy.load.to_torch import image_input_chw
from zerop_deploy.validate.compare import validate_files

__all__ = ["bench", "inspect", "validate"]


def validate(
    qmodel: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    *,
    data: str,
    preprocess: Preprocess | None = None,
    min_agreement: float | None = None,
) -> dict[str, Any]:
    """Check an exported model against its fp32 original on the images of ``data``.

    Args:
        qmodel: The exported model.
        reference: The original fp32 model.
        data: Image source (folder, .npz, .npy or "builtin"); labelled sources add accuracy.
        preprocess: How the images become model inputs.
        min_agreement: Quality gate on the fp32-vs-quantized top-1 agreement, in [0, 1].

    Returns:
        The ``zerop-deploy validate`` document
        (:func:`zerop_deploy.validate.compare.validate_files`).

    Raises:
        QualityGateError: The agreement is under ``min_agreement`` (the document is its ``doc``).
    """
    preprocess = preprocess or Preprocess()
    chw = image_input_chw(read_model(reference), str(reference))
    pool = load_pool(open_source(data, preprocess=preprocess), chw)
    return validate_files(
        qmodel, reference, images=preprocess.to_input(pool.images).numpy(), labels=pool.labels,
        min_agreement=min_agreement,
    )  # fmt: skip
