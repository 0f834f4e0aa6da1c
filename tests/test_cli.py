"""The command line: JSON contract, human output, exit codes and one-line errors."""

import json
import subprocess
import sys

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.test_load import custom_op_model
from zerop_deploy.cli.main import main


def run(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_inspect_json_is_one_document_on_stdout(tmp_path, cnn_bn):
    p = tmp_path / "m.onnx"
    onnx.save(cnn_bn, str(p))
    code, out, _ = run("inspect", str(p), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["batchnorm_nodes"] == 2 and doc["conversion"]["ok"] is True


def test_inspect_table(tmp_path, cnn_folded):
    p = tmp_path / "f.onnx"
    onnx.save(cnn_folded, str(p))
    code, out, _ = run("inspect", str(p))
    assert code == 0 and "(BN folded)" in out and "PyTorch conversion  ok" in out


def test_unconvertible_model_reports_json_and_exits_2(tmp_path):
    p = tmp_path / "c.onnx"
    onnx.save(custom_op_model(), str(p))
    code, out, err = run("inspect", str(p), "--json")
    assert code == 2
    doc = json.loads(out)
    assert doc["conversion"]["ok"] is False and "Frobnicate" in doc["conversion"]["error"]
    assert err.count("\n") == 1 and "frob_1" in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["inspect", "/nonexistent/m.onnx"], "/nonexistent/m.onnx"),
        (["inspect"], "Missing argument"),
        (["inspect", "x.onnx", "--bogus"], "--bogus"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_usage_is_one_line_exit_2(args, needle):
    code, out, err = run(*args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_directory_and_random_bytes_in_a_real_process(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 50)
    before = sorted(tmp_path.iterdir())
    for target in (tmp_path, junk):
        proc = subprocess.run(
            [sys.executable, "-m", "zerop_deploy", "inspect", str(target)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and str(target) in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_demo_trains_exports_and_quantizes_with_the_builtin_pool(tmp_path):
    # short budgets; the full default run is README command (1)
    d = tmp_path / "demo"
    code, out, err = run("demo", "--out-dir", str(d), "--epochs", "2", "--steps", "5", "--quiet")
    assert code == 0, err
    assert "fp32 accuracy" in out and "int4" in out and "400 held-out digits" in out
    names = {"demo_cnn.onnx", "demo_cnn_folded.onnx", "digits_test.npz", "demo_cnn.int4.onnx"}
    assert names <= {p.name for p in d.iterdir()}
    report = json.loads((d / "demo_cnn.int4.report.json").read_text())
    assert report["proxy"]["chosen"] == "builtin" and report["validation"]["images"] == 400
    assert report["accuracy"]["fp32"] > 0.3  # two epochs already learn the digits
    kept, folded = (onnx.load(str(d / n)) for n in ("demo_cnn.onnx", "demo_cnn_folded.onnx"))
    assert sum(n.op_type == "BatchNormalization" for n in kept.graph.node) == 6
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)


def test_version():
    code, out, _ = run("--version")
    assert code == 0 and "zerop-deploy" in out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--proxy", "auto"], "--candidates"),
        (["--proxy", "none"], "--synthetic"),
        (["--proxy", "none", "--synthetic", "-5"], "--synthetic -5"),
        (["--proxy", "auto", "x.npz"], "stands alone"),
        (["--candidates", "x.npz"], "--proxy auto"),
        (["--proxy", "auto", "--candidates", "/nonexistent/c"], "/nonexistent/c"),
        (["--proxy", "auto", "--candidates", "x.npz", "--samples", "0"], "--samples"),
        (["--proxy", "x.npz", "--proxy-images", "0"], "--proxy-images"),
        (["--proxy", "x.npz", "--eval", "x.npz"], "labelled"),
        (["--proxy", "/nonexistent/p.npz"], "/nonexistent/p.npz"),
        (["--proxy", "x.npz", "--steps", "0"], "--steps 0"),
        (["--proxy", "x.npz", "--steps", "-3"], "--steps -3"),
        (["--proxy", "x.npz", "--bits", "3"], "--bits"),
        (["--proxy", "x.npz", "--mean", "a,b"], "--mean"),
        (["--proxy", "x.npz", "--layer-config", "/nonexistent/l.json"], "l.json"),
    ],
)
def test_quantize_bad_input_is_one_line_exit_2(tmp_path, cnn_bn, extra, needle):
    p = tmp_path / "m.onnx"
    onnx.save(cnn_bn, str(p))
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    code, out, err = run(
        "quantize", str(p), *[str(tmp_path / e) if e == "x.npz" else e for e in extra]
    )
    assert code == 2, err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.onnx", "x.npz"]  # nothing written


def test_onnxruntime_failure_is_one_line_in_a_real_process(tmp_path, cnn_bn):
    # a model whose input disagrees with its first Conv: onnxruntime fails at run time and must
    # not print its own error log beside ours
    m = onnx.ModelProto()
    m.CopyFrom(cnn_bn)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7
    onnx.save(m, str(tmp_path / "bad.onnx"))
    r = subprocess.run(
        [sys.executable, "-m", "zerop_deploy", "inspect", str(tmp_path / "bad.onnx")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "onnxruntime" in r.stderr and "Traceback" not in r.stderr


def test_an_unexpected_exception_is_one_line_and_exit_70_never_the_gate_code_1(
    tmp_path, cnn_bn, monkeypatch
):
    # a ValueError from deep inside used to escape as a traceback and exit 1, the code that
    # means "a quality gate failed" to a release pipeline
    def boom(_path):
        raise ValueError("activation scale must be positive and finite, got nan")

    p = tmp_path / "m.onnx"
    onnx.save(cnn_bn, str(p))
    monkeypatch.setattr("zerop_deploy.api.inspect", boom)
    code, out, err = run("inspect", str(p))
    assert code == 70 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "internal error (ValueError: activation scale must be positive and finite" in err
    monkeypatch.setenv("ZEROP_DEPLOY_DEBUG", "1")
    code, _, err = run("inspect", str(p))
    assert code == 70 and "Traceback" in err


def test_a_click_exception_is_exit_2_not_1(tmp_path, cnn_bn, monkeypatch):
    def refuse(_path):
        raise click.ClickException("cannot use this")  # click's own default exit code is 1

    p = tmp_path / "m.onnx"
    onnx.save(cnn_bn, str(p))
    monkeypatch.setattr("zerop_deploy.api.inspect", refuse)
    code, _, err = run("inspect", str(p))
    assert code == 2 and "cannot use this" in err


def test_quantize_refuses_an_output_another_process_is_writing(tmp_path, cnn_bn):
    out = tmp_path / "m.int4.onnx"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        onnx.save(cnn_bn, str(tmp_path / "m.onnx"))
        np.savez(tmp_path / "x.npz", images=np.zeros((4, 16, 16, 3), np.uint8))
        args = ["--proxy", str(tmp_path / "x.npz"), "-o", str(out), "--steps", "1", "--quiet"]
        code, _, err = run("quantize", str(tmp_path / "m.onnx"), *args)
        assert code == 2 and err.count("\n") == 1, err
        assert f"another zerop-deploy run is writing this output (pid {holder.pid})" in err
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.onnx", "x.npz"]  # lock removed


_HOLD_LOCK = """
import sys
from zerop_deploy.io import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_finished_quantize_leaves_no_lock_file(tmp_path, cnn_bn):
    onnx.save(cnn_bn, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 16, 16, 3), np.uint8))
    (tmp_path / "out").mkdir()
    args = ["--proxy", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out" / "m.int4.onnx")]
    code, _, err = run("quantize", str(tmp_path / "m.onnx"), *args, "--steps", "1", "--quiet")
    assert code == 0, err
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == [
        "m.int4.onnx",
        "m.int4.report.json",
    ]


def test_bias_correction_option_reaches_the_report(tmp_path, cnn_bn):
    onnx.save(cnn_bn, str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", images=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    docs = {}
    for flag in ("--bias-correction", "--no-bias-correction"):
        out = tmp_path / f"{flag}.onnx"
        args = ["--proxy", str(tmp_path / "x.npz"), "-o", str(out), "--steps", "1", "--quiet"]
        code, _, err = run("quantize", str(tmp_path / "m.onnx"), *args, flag)
        assert code == 0, err
        docs[flag] = json.loads(out.with_name(out.stem + ".report.json").read_text())
    on, off = docs["--bias-correction"], docs["--no-bias-correction"]
    assert on["config"]["quant"]["bias_correction"] is True
    assert off["calibration"]["bias_correction"] is None
    corrected = on["calibration"]["bias_correction"]
    assert corrected["layers"] >= 2 and corrected["images"] >= 1 and corrected["largest_shift"] > 0
