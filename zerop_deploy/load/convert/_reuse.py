"""Look up the converter onnx2torch registers for an older version of an op."""

from __future__ import annotations

from onnx2torch.node_converters.registry import (
    _CONVERTER_REGISTRY,
    OperationDescription,
    TConverter,
)


def onnx2torch_converter(op_type: str, version: int, domain: str = "") -> TConverter:
    """The converter onnx2torch registered for exactly ``op_type`` at ``version``.

    Raises:
        LookupError: If onnx2torch has no converter registered for that exact version (an onnx2torch
            upgrade renamed or dropped it; the caller's module must then be revisited).
    """
    desc = OperationDescription(domain=domain, operation_type=op_type, version=version)
    try:
        return _CONVERTER_REGISTRY[desc]
    except KeyError as e:
        raise LookupError(f"onnx2torch has no converter for {op_type}-{version}") from e


def replace_converter(op_type: str, version: int, converter: TConverter, domain: str = "") -> None:
    """Register ``converter`` in place of the one onnx2torch registered for ``op_type-version``.

    onnx2torch's ``add_converter`` refuses a version that already has a converter; this is for the
    few converters of its own that mishandle ordinary graphs (each caller says which and why).

    Raises:
        LookupError: If onnx2torch has no converter for that exact version to replace.
    """
    desc = OperationDescription(domain=domain, operation_type=op_type, version=version)
    if desc not in _CONVERTER_REGISTRY:
        raise LookupError(f"onnx2torch has no converter for {op_type}-{version} to replace")
    _CONVERTER_REGISTRY[desc] = converter
