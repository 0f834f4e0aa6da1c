"""Converters that onnx2torch lacks, registered through its own ``add_converter``.

One file per op, named ``convert_<op>``; importing this package registers them all. Each converter
has a
test in ``tests/test_convert.py`` that builds a one-node model and compares onnxruntime with
PyTorch.
:func:`zerop_deploy.load.convert.prepare.prepare_for_onnx2torch` is a pre-pass (weights computed by
Identity/ConstantOfShape become initializers; inert ``allowzero=1`` on Reshape is dropped).
"""

from zerop_deploy.load.convert import (  # noqa: F401  # noqa: F401
    convert_averagepool,
    convert_clip,
    convert_dropout,
    convert_gelu,
    convert_layernormalization,
    convert_reducemax,
    convert_reducemean,
    convert_reducemin,
    convert_reductions18,
    convert_reshape,
    convert_split,
    convert_transpose,
    convert_type_versions,
)
