"""Plain-text renderings of the API's documents (what the commands print without --json)."""

from __future__ import annotations

from typing import Any

VARIANTS = ("ort_fp32_us", "ort_qdq_us", "ort_matmulnbits_us", "ours_int4_us")
"""The per-layer columns of a bench document (``zerop_deploy.bench.tables.VARIANTS``)."""


def format_summary(doc: dict[str, Any]) -> str:
    """Render an inspect document as a readable table."""

    def shape(v: dict[str, Any]) -> str:
        return f"{v['name']} {v['dtype']}[{', '.join(str(d) for d in v['shape'])}]"

    conv = doc.get("conversion") or {}
    if conv.get("ok"):
        conv_text = f"ok (max |torch - onnxruntime| = {conv['max_abs_diff']:.2e})"
    else:
        conv_text = f"FAILED: {conv.get('error')}"
    rows = [
        ("model", doc["path"]),
        ("opset / IR", f"{doc['opset']} / {doc['ir_version']}"),
        ("inputs", "; ".join(shape(v) for v in doc["inputs"])),
        ("outputs", "; ".join(shape(v) for v in doc["outputs"])),
        ("nodes", str(doc["nodes"])),
        ("parameters", f"{doc['parameters']:,}"),
        (
            "BatchNormalization",
            f"{doc['batchnorm_nodes']}" + (" (BN folded)" if doc["bn_folded"] else ""),
        ),
        ("quantizable layers", str(len(doc["quantizable"]))),
        ("PyTorch conversion", conv_text),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append("")
    lines.append("op counts: " + ", ".join(f"{op} {n}" for op, n in doc["op_counts"].items()))
    if doc["quantizable"]:
        lines.append("")
        name_w = max(len(q["node"]) for q in doc["quantizable"])
        lines.append(f"{'layer'.ljust(name_w)}  {'op':<13} weight shape")
        for q in doc["quantizable"]:
            dims = "x".join(str(d) for d in q["weight_shape"])
            lines.append(f"{q['node'].ljust(name_w)}  {q['op']:<13} {dims}")
    if doc.get("float_nodes"):
        lines.append("")
        lines.append(f"kept in float ({len(doc['float_nodes'])} compute nodes):")
        lines.extend(f"  {f['node']} ({f['op']}): {f['reason']}" for f in doc["float_nodes"])
    return "\n".join(lines)


def format_validation(doc: dict[str, Any]) -> str:
    """Render a :func:`validate` document as a readable table."""
    rows = [
        ("quantized model", str(doc["qmodel"])),
        ("reference", str(doc["reference"])),
        ("images", str(doc["images"])),
        ("top-1 agreement", f"{100 * doc['fp32_vs_quant_top1_agreement']:.2f} %"),
        ("max |logit diff|", f"{doc['max_abs_logit_diff']:.4g}"),
    ]
    if "accuracy" in doc:
        acc = doc["accuracy"]
        rows.append(("accuracy fp32", f"{100 * acc['fp32']:.2f} %"))
        rows.append(("accuracy quantized", f"{100 * acc['quantized']:.2f} %"))
    if doc.get("min_agreement") is not None:
        verdict = "passed" if doc["passed"] else "FAILED"
        rows.append(("gate", f"{verdict} (min agreement {100 * doc['min_agreement']:.2f} %)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def format_bench(doc: dict[str, Any]) -> str:
    """Format :func:`bench`'s result as a plain-text table."""
    e2e = doc["end_to_end"]
    lines = [
        f"model: {doc['model']}  (batch {doc['batch']}, {doc['threads']} threads, "
        f"int4 kernels: {'yes' if doc['kernels']['available'] else 'not built'}"
        f"{', AVX512-VNNI' if doc['kernels'].get('avx512vnni') else ''}"
        f"{', AVX2' if doc['kernels'].get('avx2') else ''})",
    ]
    for row in e2e["by_batch"]:
        parts = [f"fp32 {row['fp32_ms']:.3f} ms"]
        for key, name in (("deploy", "deployment file"), ("qdq", "QDQ")):
            if row[f"{key}_ms"]:
                parts.append(
                    f"{name} {row[f'{key}_ms']:.3f} ms ({row[f'{key}_speedup']:.2f}x fp32's speed)"
                )
        lines.append(f"end to end, onnxruntime, batch {row['batch']}: " + ", ".join(parts))
    if not doc["layers"]:
        return "\n".join(lines)
    head = ["node", "op", "ort fp32", "ort QDQ", "MatMulNBits", "ours int4"]
    rows = [
        [r["node"], r["op"], *("-" if r[k] is None else f"{r[k]:.0f}" for k in VARIANTS)]
        for r in doc["layers"]
    ]
    rows.append(["TOTAL (us)", "", *(f"{doc['totals'][k]:.0f}" for k in VARIANTS)])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    lines += ["per layer, microseconds (median):", fmt.format(*head)]
    lines += [fmt.format(*r) for r in rows]
    notes = {r["note"] for r in doc["layers"] if r["note"]}
    lines += [f"note: ours not run for: {n}" for n in sorted(notes)]
    return "\n".join(lines)
