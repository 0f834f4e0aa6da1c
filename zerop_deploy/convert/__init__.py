"""Converters that onnx2torch lacks, registered through its own ``add_converter``.

One file per op, named ``convert_<op>``; importing this package registers them all. Each converter has a
test in ``tests/test_convert.py`` that builds a one-node model and compares onnxruntime with PyTorch.
:mod:`zerop_deploy.convert.fold` is a pre-pass that turns computed weights into initializers.
"""

from zerop_deploy.convert import convert_reducemax, convert_reducemean, convert_reducemin  # noqa: F401
from zerop_deploy.convert import (  # noqa: F401
    convert_averagepool,
    convert_dropout,
    convert_gelu,
    convert_reshape,
    convert_split,
)
