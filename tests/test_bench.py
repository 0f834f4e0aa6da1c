import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from zerop_deploy import kernels
from zerop_deploy.bench.tables import _Layer, _session, bench
from zerop_deploy.cli.format import format_bench
from zerop_deploy.cli.main import main


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, cnn_folded):
    path = tmp_path_factory.mktemp("bench") / "cnn.onnx"
    onnx.save(cnn_folded, str(path))
    return path


def test_bench_times_every_quantizable_layer(model_path):
    doc = bench(model_path, threads=1, batch=2, rounds=1, qdq_path=model_path)
    assert doc["threads"] == 1 and doc["batch"] == 2
    assert doc["end_to_end"]["fp32_ms"] > 0 and doc["end_to_end"]["qdq_ms"] > 0
    assert [r["op"] for r in doc["layers"]] == ["Conv", "Conv", "Gemm"]
    for row in doc["layers"]:
        assert row["ort_fp32_us"] > 0 and row["ort_qdq_us"] > 0
        assert (row["ours_int4_us"] is not None) == kernels.available()
    # MatMulNBits applies to the Gemm only (the convolutions are 3x3).
    assert [r["ort_matmulnbits_us"] is not None for r in doc["layers"]] == [False, False, True]
    total = sum(r["ort_fp32_us"] for r in doc["layers"])
    assert doc["totals"]["ort_fp32_us"] == pytest.approx(total, abs=0.2)
    table = format_bench(doc)
    assert "TOTAL" in table and "1 threads" in table


@pytest.mark.skipif(not kernels.available(), reason="native kernels not built")
def test_layer_variants_compute_the_same_product():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 20)).astype(np.float32)
    node = onnx.helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")
    consts = {"w": w, "b": rng.standard_normal(6).astype(np.float32)}
    layer = _Layer(node, consts, rng.random((3, 20), dtype=np.float32))
    feed = {"X": layer.x}
    fp32 = _session(layer.fp32_model(), 1).run(None, feed)[0]
    qdq = _session(layer.qdq_model(), 1).run(None, feed)[0]
    nbits = _session(layer.nbits_model(layer.x), 1).run(None, feed)[0]
    ours = layer.ours(1)()
    np.testing.assert_allclose(fp32, layer.x @ w.T + consts["b"], rtol=1e-5, atol=1e-5)
    for y in (qdq, nbits, ours):
        np.testing.assert_allclose(y, fp32, atol=0.15 * np.abs(fp32).max())


def test_cli_bench_json_and_missing_file(model_path, tmp_path):
    result = CliRunner().invoke(main, ["bench", str(model_path), "--json", "--threads", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["threads"] == 1 and len(doc["layers"]) == 3
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2
    assert "missing.onnx" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_gemm_attributes_and_3d_matmul(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "W"),
        numpy_helper.from_array(np.zeros(6, np.float32), "B"),
        numpy_helper.from_array(np.array([1, 4, 6], np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((6, 5)).astype(np.float32), "W2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", "B"], ["h"], transA=1, alpha=0.5, name="g"),
            helper.make_node("Reshape", ["h", "shape"], ["h3"]),
            helper.make_node("MatMul", ["h3", "W2"], ["y"], name="mm"),
        ],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "gm.onnx"
    onnx.save(model, str(path))
    gemm, matmul = bench(path, threads=1, rounds=1)["layers"]
    # transA/alpha: onnxruntime variants still run (attributes kept), ours is skipped with a note.
    assert gemm["ort_fp32_us"] > 0 and gemm["ort_qdq_us"] > 0
    assert gemm["ours_int4_us"] is None and "transA" in gemm["note"]
    # A 3-D MatMul folds its leading dimensions into M for MatMulNBits and our kernel.
    assert matmul["ort_matmulnbits_us"] is not None
    assert (matmul["ours_int4_us"] is not None) == kernels.available()
