"""onnxruntime validation of exported models: agreement, logit difference, accuracy, the gate."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.helpers import shared_path
from tests.test_export import make_layers
from zerop_deploy.cli.format import format_validation
from zerop_deploy.errors import ConfigError, InputError, QualityGateError, ValidationError
from zerop_deploy.export.qdq import export_qdq, save_qdq
from zerop_deploy.load.parity import random_inputs
from zerop_deploy.validate.compare import (
    accuracy,
    agreement_with_student,
    compare_models,
    run_logits,
)
from zerop_deploy.validate.compare import validate_files as validate


def _images(n=40, seed=1):
    return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)


@pytest.fixture(scope="module")
def qcnn(cnn_bn):
    return export_qdq(cnn_bn, make_layers(cnn_bn, random_inputs(cnn_bn, batch=8)))


@pytest.fixture()
def files(tmp_path, cnn_bn, qcnn):
    ref, q = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    onnx.save(cnn_bn, str(ref))
    save_qdq(qcnn, q)
    return q, ref


def _biased(model: onnx.ModelProto, cls: int = 0) -> onnx.ModelProto:
    """The same model with a huge bias on class ``cls``: it always predicts that class."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == "8.bias":
            b = numpy_helper.to_array(t).copy()
            b[cls] += 1e3
            t.CopyFrom(numpy_helper.from_array(b, t.name))
    return out


def test_compare_models_on_protos_and_paths(cnn_bn, qcnn, files):
    images = _images()
    doc = compare_models(qcnn, cnn_bn, images, batch_size=16)
    assert set(doc) == {"images", "fp32_vs_quant_top1_agreement", "max_abs_logit_diff"}
    assert doc["images"] == 40
    assert 0.0 <= doc["fp32_vs_quant_top1_agreement"] <= 1.0
    assert 0.0 < doc["max_abs_logit_diff"] < 0.5
    assert compare_models(*files, images, batch_size=7) == doc  # paths, other batching: same
    same = compare_models(cnn_bn, cnn_bn, images)
    assert same["fp32_vs_quant_top1_agreement"] == 1.0 and same["max_abs_logit_diff"] == 0.0


def test_accuracy_and_agreement_with_student(cnn_bn, qcnn):
    images = _images()
    ref = run_logits(cnn_bn, images)
    assert ref.shape == (40, 4)
    assert accuracy(cnn_bn, images, ref.argmax(axis=1)) == 1.0
    assert accuracy(_biased(cnn_bn), images, np.zeros(40, np.int64)) == 1.0
    q = run_logits(qcnn, images)
    doc = agreement_with_student(qcnn, q, images=images)
    assert doc == {
        "images": 40,
        "ort_vs_student_top1_agreement": 1.0,
        "max_abs_logit_diff_vs_student": 0.0,
    }
    doc = agreement_with_student(q, ref)  # precomputed onnxruntime logits
    assert doc["ort_vs_student_top1_agreement"] == np.mean(q.argmax(1) == ref.argmax(1))
    with pytest.raises(ConfigError, match="images="):
        agreement_with_student(qcnn, q)


def test_validate_document_with_labels(files):
    q, ref = files
    images = _images()
    labels = run_logits(ref, images).argmax(axis=1)
    doc = validate(q, ref, images=images, labels=labels, min_agreement=0.5)
    assert doc["qmodel"] == str(q) and doc["reference"] == str(ref)
    assert doc["accuracy"]["fp32"] == 1.0
    assert doc["accuracy"]["quantized"] == doc["fp32_vs_quant_top1_agreement"]
    assert doc["passed"] is True and doc["min_agreement"] == 0.5
    text = format_validation(doc)
    assert "top-1 agreement" in text and "accuracy quantized" in text and "passed" in text
    doc = validate(q, ref, images=images)
    assert "accuracy" not in doc and doc["passed"] is None


def test_quality_gate_raises_after_computing_the_document(tmp_path, cnn_bn):
    ref = tmp_path / "ref.onnx"
    bad = tmp_path / "bad.onnx"
    onnx.save(cnn_bn, str(ref))
    images = _images()
    predicted = run_logits(ref, images).argmax(axis=1)
    cls = int(np.bincount(predicted, minlength=4).argmin())  # the rarest prediction
    onnx.save(_biased(cnn_bn, cls), str(bad))
    expected = np.mean(predicted == cls)
    with pytest.raises(QualityGateError, match=r"under --min-agreement 0\.99") as info:
        validate(bad, ref, images=images, min_agreement=0.99)
    assert info.value.exit_code == 1 and isinstance(info.value, QualityGateError)
    assert info.value.doc["fp32_vs_quant_top1_agreement"] == pytest.approx(expected)
    assert info.value.doc["passed"] is False
    assert "FAILED" in format_validation(info.value.doc)


def test_fixed_batch_model_is_padded(cnn_bn):
    fixed = onnx.ModelProto()
    fixed.CopyFrom(cnn_bn)
    for v in (*fixed.graph.input, *fixed.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 4
    images = _images(10)
    np.testing.assert_allclose(run_logits(fixed, images), run_logits(cnn_bn, images), atol=1e-6)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((0, 3, 16, 16), np.float32), "non-empty"),
        (np.zeros((2, 16, 16, 3), np.uint8), "non-empty|float32"),
        (np.zeros((2, 3, 16, 16), np.uint8), "float32 NCHW"),
        (np.zeros((2, 3, 32, 32), np.float32), "resize or crop"),
    ],
    ids=["empty", "nhwc-uint8", "uint8", "wrong-size"],
)
def test_bad_images_are_input_errors(cnn_bn, images, match):
    with pytest.raises(InputError, match=match):
        run_logits(cnn_bn, images)


def test_bad_arguments(files, tmp_path):
    q, ref = files
    images = _images(4)
    with pytest.raises(InputError, match="labels"):
        validate(q, ref, images=images, labels=np.zeros(3, np.int64))
    with pytest.raises(ConfigError, match="min-agreement"):
        validate(q, ref, images=images, min_agreement=99)
    with pytest.raises(InputError, match="no such file"):
        validate(tmp_path / "missing.onnx", ref, images=images)
    broken = onnx.ModelProto()
    broken.CopyFrom(onnx.load(str(ref)))
    broken.graph.node[2].op_type = "NoSuchOp"
    with pytest.raises(ValidationError, match="onnxruntime cannot load"):
        run_logits(broken, images)


# --------------------------------------------------------------------------------------------------
# a real network (needs ../shared)
# --------------------------------------------------------------------------------------------------


@pytest.mark.shared
@pytest.mark.slow
def test_resnet20_max_abs_w8a8_keeps_accuracy(tmp_path):
    """Plain max-abs W8A8 (no training), calibrated on natural-image patches (zero-shot setting)."""
    model_path = shared_path("models", "resnet20_cifar10.onnx")
    test_path = shared_path("data", "cifar10_test.npz")
    proxy_path = shared_path("data", "natural_patches_5k.npz")
    if not all(p.exists() for p in (model_path, test_path, proxy_path)):
        pytest.skip("../shared models/data are not present")
    from zerop_deploy.load.read import read_model

    def nchw(x):
        return (x.astype(np.float32) / 255.0).transpose(0, 3, 1, 2).copy()

    data = np.load(test_path)
    images, labels = nchw(data["images"][:500]), data["labels"][:500].astype(np.int64)
    calib = {"input": nchw(np.load(proxy_path)["images"][::40][:128])}
    proto = read_model(model_path)
    out = tmp_path / "r20.int8.onnx"
    save_qdq(export_qdq(proto, make_layers(proto, calib, wbits=8, abits=8)), out)
    doc = validate(out, model_path, images=images, labels=labels)
    assert doc["accuracy"]["quantized"] >= doc["accuracy"]["fp32"] - 0.02, doc
    assert doc["fp32_vs_quant_top1_agreement"] >= 0.95, doc
