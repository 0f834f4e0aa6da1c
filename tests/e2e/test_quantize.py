"""The whole pipeline on a small CNN: quantize, export, agreement, resume after kill -9."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

from tests.helpers import small_cnn
from tests.readme_schema import mismatches, readme_schema


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    onnx.save(small_cnn(keep_bn=True), str(d / "m.onnx"))
    rng = np.random.default_rng(0)
    # smooth random "photos": low-frequency noise upsampled, so BN statistics are not absurd
    base = rng.integers(0, 256, size=(300, 4, 4, 3)).astype(np.float32)
    images = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)
    images = np.clip(images + rng.normal(0, 12, images.shape), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 4, size=300)
    np.savez(d / "proxy.npz", images=images)
    np.savez(d / "eval.npz", images=images[:100], labels=labels[:100])
    return d


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "zerop_deploy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _q(workdir):
    """The start of every quantize command here: the small CNN and its proxy images."""
    return ["quantize", str(workdir / "m.onnx"), "--proxy", str(workdir / "proxy.npz")]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "bits", [["--bits", "8"], ["--wbits", "4", "--abits", "8"], ["--bits", "4"]]
)
def test_quantize_exports_a_checked_qdq_model_that_agrees(workdir, bits):
    from zerop_deploy.api import default_output
    from zerop_deploy.config import QuantConfig

    before = _sha(workdir / "m.onnx")
    proc = _cli(
        *_q(workdir),
        *bits,
        "--steps",
        "15",
        "--eval",
        str(workdir / "eval.npz"),
        "--json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    out = default_output(workdir / "m.onnx", QuantConfig(wbits=int(bits[1]), abits=int(bits[-1])))
    assert doc["output"] == str(out) and out.is_file()
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) >= 6
    assert doc["validation"]["ort_vs_student_top1_agreement"] >= 0.99
    assert doc["training"]["steps"] == 15 and set(doc["accuracy"]) == {"fp32", "quantized"}
    assert mismatches(doc, readme_schema()) == []  # README's report schema is this report's
    report = out.with_name(out.name.replace(".onnx", ".report.json"))
    assert json.loads(report.read_text())["output"] == str(out)
    assert _sha(workdir / "m.onnx") == before  # the input is never modified
    assert not list(workdir.glob("*.ckpt")) and not list(workdir.glob(".*.tmp"))


def test_output_over_the_input_is_refused(workdir):
    proc = _cli(
        *_q(workdir),
        "-o",
        str(workdir / "m.onnx"),
        "--steps",
        "1",
    )
    assert proc.returncode == 2 and "output path is the input" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_min_agreement_gate_exits_1_but_writes(workdir, tmp_path):
    out = tmp_path / "g.onnx"
    proc = _cli(
        *_q(workdir),
        "-o",
        str(out),
        "--steps",
        "2",
        "--min-agreement",
        "1.01",
    )
    assert proc.returncode == 2 and "--min-agreement" in proc.stderr  # 1.01 is not a fraction
    proc = _cli(
        *_q(workdir),
        "-o",
        str(out),
        "--steps",
        "2",
        "--min-agreement",
        "1.0",
        "--bits",
        "4",
        "--first-last-bits",
        "4",
    )
    assert out.is_file()
    report = json.loads((tmp_path / "g.report.json").read_text())
    if report["validation"]["fp32_vs_quant_top1_agreement"] < 1.0:
        assert proc.returncode == 1
        assert proc.stderr.strip().endswith("under --min-agreement 1.0")
    else:
        assert proc.returncode == 0
    proc = _cli(
        *_q(workdir),
        "-o",
        str(out),
        "--steps",
        "2",
        "--min-agreement",
        "0.0",
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "phase",
    [
        "reading and converting",  # start-up: nothing done yet
        "calibrating step sizes",  # student built, no checkpoint yet
        "checkpoint",  # fine-tuning under way
        "validating the exported model",  # training done, outputs not written yet
    ],
)
def test_kill_9_in_every_phase_then_resume_gives_the_same_model(workdir, tmp_path, phase):
    args = [*_q(workdir), "--steps", "120", "--checkpoint-every", "0", "--seed", "4"]
    ref = workdir / "kill-ref.onnx"  # one reference run for every phase
    if not ref.exists():
        assert _cli(*args, "--quiet", "-o", str(ref)).returncode == 0
    out = tmp_path / "m.onnx"
    if phase == "checkpoint":
        proc = _start_until_checkpoint(args, out, stderr=subprocess.DEVNULL)
    else:
        proc = _start_until_line(args, out, phase)
    assert proc.poll() is None, f"the run ended before '{phase}' could be interrupted"
    time.sleep(float(np.random.default_rng(len(phase)).uniform(0, 0.2)))  # anywhere in the phase
    proc.kill()
    proc.wait()
    # never a partial output: the model appears only together with its report
    assert out.exists() == out.with_name("m.report.json").exists()
    resumed = _cli(*args, "--quiet", "-o", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _weights(ref) == _weights(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.report.json"]


def _start_until_line(args, out, marker):
    """Start ``zerop-deploy *args -o out`` on a terminal; return once it prints ``marker``."""
    import pty
    import select

    master, slave = pty.openpty()  # progress lines are printed only to a terminal
    proc = subprocess.Popen(
        [sys.executable, "-m", "zerop_deploy", *args, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    seen, deadline = b"", time.time() + 240
    try:
        while marker.encode() not in seen and proc.poll() is None and time.time() < deadline:
            if select.select([master], [], [], 0.05)[0]:
                seen += os.read(master, 65536)
    finally:
        os.close(master)  # later writes to the terminal fail quietly (EIO) or block: kill follows
    return proc


def _start_until_checkpoint(args, out, *, stderr):
    """Start ``zerop-deploy *args -o out`` and return once its first checkpoint exists."""
    ckpt = out.with_name(out.name + ".ckpt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "zerop_deploy", *args, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    return proc


def _weights(path):
    return {t.name: t.raw_data for t in onnx.load(str(path)).graph.initializer}


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_torchrun_two_cpu_processes_train_with_ddp(workdir, tmp_path):
    out = tmp_path / "ddp.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            _free_port(),
            "-m",
            "zerop_deploy",
            *_q(workdir),
            "-o",
            str(out),
            "--steps",
            "8",
            "--batch-size",
            "16",
            "--json",
            "--quiet",
            "--device",
            "cpu",
            "--target",
            "qdq",  # the student's own weights: the ort-cpu file adds calibrated ranges
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # only rank 0 prints
    assert doc["training"]["processes"] == 2 and doc["training"]["steps"] == 8
    single = tmp_path / "single.onnx"
    assert (
        _cli(
            *_q(workdir),
            "-o",
            str(single),
            "--steps",
            "8",
            "--batch-size",
            "16",
            "--quiet",
            "--target",
            "qdq",
        ).returncode
        == 0
    )
    # two half-batches averaged by DDP make the same update as one whole batch
    a = {t.name: np.frombuffer(t.raw_data, np.uint8) for t in onnx.load(str(out)).graph.initializer}
    b = {
        t.name: np.frombuffer(t.raw_data, np.uint8)
        for t in onnx.load(str(single)).graph.initializer
    }
    same = sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].size for k in a)
    assert same > 0.97


def test_validate_command_on_an_exported_model(workdir, tmp_path):
    out = tmp_path / "v.onnx"
    assert (
        _cli(
            *_q(workdir),
            "-o",
            str(out),
            "--steps",
            "3",
            "--quiet",
        ).returncode
        == 0
    )
    proc = _cli(
        "validate",
        str(out),
        "--reference",
        str(workdir / "m.onnx"),
        "--data",
        str(workdir / "eval.npz"),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["images"] == 100 and 0 <= doc["fp32_vs_quant_top1_agreement"] <= 1
    assert set(doc["accuracy"]) == {"fp32", "quantized"}
    table = _cli(
        "validate",
        str(out),
        "--reference",
        str(workdir / "m.onnx"),
        "--data",
        str(workdir / "eval.npz"),
    )
    assert table.returncode == 0 and "top-1 agreement" in table.stdout


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_keeps_a_checkpoint_and_resume_gives_the_same_model(
    workdir, tmp_path, sig, code
):
    args = [
        *_q(workdir),
        "--steps", "200", "--checkpoint-every", "0", "--quiet", "--seed", "5",
    ]  # fmt: skip
    ref = tmp_path / "ref.onnx"
    assert _cli(*args, "-o", str(ref)).returncode == 0
    out = tmp_path / "int.onnx"
    proc = _start_until_checkpoint(args, out, stderr=subprocess.PIPE)
    assert proc.poll() is None, "the run finished before it could be interrupted; raise --steps"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert len(err.strip().splitlines()) == 1 and "--resume" in err and "Traceback" not in err
    assert out.with_name(out.name + ".ckpt").exists() and not out.exists()
    resumed = _cli(*args, "-o", str(out), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert _weights(ref) == _weights(out)
