"""zerop-deploy: zero-shot low-bit quantization of ONNX CNNs with proxy data.

The public entry points live in :mod:`zerop_deploy.api.quantization`;
:func:`zerop_deploy.load.to_torch.load_model` reads and converts a user's ONNX file. Importing this
package is cheap: torch and onnxruntime load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
