"""The Python API: one verb per pipeline stage, each configured by frozen config objects.

``quantize(model, QuantConfig(...), TrainConfig(...), DataConfig(...), RunConfig(...))`` reads the
model, converts it, builds and calibrates the fake-quantized student, fine-tunes it by distillation,
exports the QDQ model into the original graph, checks it in onnxruntime and writes the report.
``select_proxy``, ``synthesize``, ``retarget``, ``inspect``, ``validate`` and ``bench`` are the
other commands' verbs.
"""

from zerop_deploy.api.common import default_output, default_report, resolve_device
from zerop_deploy.api.files import bench, inspect, validate
from zerop_deploy.api.proxy_selection import select_proxy
from zerop_deploy.api.quantization import quantize
from zerop_deploy.api.retargeting import retarget
from zerop_deploy.api.synthesis import synthesize

__all__ = [
    "bench",
    "default_output",
    "default_report",
    "inspect",
    "quantize",
    "resolve_device",
    "retarget",
    "select_proxy",
    "synthesize",
    "validate",
]
