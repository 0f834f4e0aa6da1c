import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from tests.test_stats import _domain, _trained_bn_model
from zerop_deploy.cli.main import main
from zerop_deploy.config import SynthConfig
from zerop_deploy.errors import ConfigError
from zerop_deploy.load.to_torch import convert_model
from zerop_deploy.proxy.stats import bns_distance, observe_bns, stored_bns
from zerop_deploy.synth.synthesize import SynthCache, synthesize, synthesize_batch, target_labels


@pytest.fixture(scope="module")
def trained():
    proto = _trained_bn_model(_domain(512, seed=1))
    return proto, convert_model(proto).eval()


def _distance(teacher, proto, images):
    return bns_distance(observe_bns(teacher, proto, [images.float() / 255]), stored_bns(proto))


def test_synthesis_moves_the_statistics_to_the_stored_ones(trained):
    proto, teacher = trained
    cfg = SynthConfig(images=64, iterations=60, batch_size=64)
    batches, seconds = synthesize(teacher, proto, (3, 16, 16), cfg)
    x = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (64, 3, 16, 16) and seconds > 0
    start = (0.5 + 0.2 * torch.randn(64, 3, 16, 16)).clamp(0, 1).mul(255).round().byte()
    assert _distance(teacher, proto, x) < 0.5 * _distance(teacher, proto, start)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_a_batch_depends_only_on_seed_and_index(trained):
    proto, teacher = trained
    cfg = SynthConfig(images=20, iterations=3, batch_size=8)
    full, _ = synthesize(teacher, proto, (3, 16, 16), cfg)
    assert sorted(full) == [0, 1, 2] and len(full[2]) == 4
    part, _ = synthesize(teacher, proto, (3, 16, 16), cfg, batches=[1])
    assert list(part) == [1] and torch.equal(part[1], full[1])
    other = synthesize_batch(teacher, proto, (3, 16, 16), 8, 1, SynthConfig(seed=1, iterations=3))
    assert not torch.equal(other, full[1])


def test_finished_batches_are_not_redone(trained):
    proto, teacher = trained
    cfg = SynthConfig(images=24, iterations=2, batch_size=8)
    marker = torch.zeros(8, 3, 16, 16, dtype=torch.uint8)
    calls = []
    out, _ = synthesize(
        teacher, proto, (3, 16, 16), cfg, done={0: marker}, on_batch=lambda d: calls.append(len(d))
    )
    assert torch.equal(out[0], marker) and calls == [2, 3]


def test_cache_roundtrip_and_fingerprint(tmp_path):
    cache = SynthCache(tmp_path / "c.npz", "abc")
    assert cache.load() == {}
    cache.save(
        {
            0: torch.ones(2, 1, 4, 4, dtype=torch.uint8),
            3: torch.zeros(1, 1, 4, 4, dtype=torch.uint8),
        }
    )
    back = cache.load()
    assert sorted(back) == [0, 3] and back[0].sum() == 32
    assert SynthCache(tmp_path / "c.npz", "other").load() == {}
    (tmp_path / "c.npz").write_bytes(b"garbage")
    assert cache.load() == {}
    cache.remove()
    assert not (tmp_path / "c.npz").exists()


def test_config_and_labels():
    with pytest.raises(ConfigError, match="-n 0"):
        SynthConfig(images=0)
    with pytest.raises(ConfigError, match="--iterations"):
        SynthConfig(iterations=0)
    assert target_labels(SynthConfig(images=5), 3).tolist() == [0, 1, 2, 0, 1]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_synth_cli_writes_npz_preview_and_json(tmp_path, trained):
    proto, _ = trained
    onnx.save(proto, str(tmp_path / "m.onnx"))
    code, out, err = run(
        "synth", tmp_path / "m.onnx", "-n", "12", "-o", tmp_path / "s.npz", "--iterations", "3",
        "--batch-size", "8", "--preview", tmp_path / "s.png", "--json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["method"] == "bns" and doc["images"] == 12 and doc["bns_distance"] > 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (12, 16, 16, 3) and z["images"].dtype == np.uint8
        assert z["labels"].tolist() == [i % 5 for i in range(12)]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "s.npz.partial").exists()
    # the file is usable as proxy data
    code, out, err = run("select-proxy", tmp_path / "m.onnx", tmp_path / "s.npz", "--json")
    assert code == 0, err
    # and as the synthetic part of a ZeroP mix, reused as it is
    code, out, err = run(
        "quantize", tmp_path / "m.onnx", "-o", tmp_path / "q.onnx", "--proxy", "none",
        "--synthetic", tmp_path / "s.npz", "--steps", "2", "--json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    syn = json.loads(out)["synthetic"]
    assert syn["method"] == "file" and syn["images"] == 12 and syn["sd_ratio"] == 1.0
    code, _, err = run("quantize", tmp_path / "m.onnx", "--synthetic", tmp_path / "no.npz")
    assert code == 2 and "no.npz" in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-n", "0", "-o", "s.npz"], "-n"),
        (["-n", "4", "-o", "m.onnx"], "is the input"),
        (["-n", "4", "-o", "nofolder/s.npz"], "does not exist"),
        (["-n", "4", "-o", "s.npz", "--iterations", "0"], "--iterations"),
    ],
)
def test_synth_bad_input_exit_2(tmp_path, cnn_bn, args, needle):
    onnx.save(cnn_bn, str(tmp_path / "m.onnx"))
    args = [tmp_path / a if a.endswith((".npz", ".onnx")) else a for a in args]
    code, _, err = run("synth", tmp_path / "m.onnx", *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_quantize_synthetic_only_and_mixed(tmp_path, cnn_bn):
    onnx.save(cnn_bn, str(tmp_path / "m.onnx"))
    code, out, err = run(
        "quantize", tmp_path / "m.onnx", "-o", tmp_path / "q.onnx", "--proxy", "none",
        "--synthetic", "16", "--steps", "2", "--json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["proxy"]["method"] == "none" and doc["synthetic"]["images"] == 16
    assert doc["synthetic"]["sd_ratio"] == 1.0 and doc["validation"]["source"] == "builtin"
    assert not (tmp_path / "q.onnx.synth.npz").exists()
    code, out, err = run(
        "quantize", tmp_path / "m.onnx", "-o", tmp_path / "q2.onnx", "--synthetic", "8",
        "--sd-ratio", "0.25", "--steps", "2", "--json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["proxy"]["method"] == "builtin" and doc["synthetic"]["sd_ratio"] == 0.25


@pytest.mark.slow
def test_torchrun_shards_synthesis_and_gives_the_single_process_images(tmp_path, cnn_bn):
    import socket
    import subprocess
    import sys

    onnx.save(cnn_bn, str(tmp_path / "m.onnx"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    args = ["synth", str(tmp_path / "m.onnx"), "-n", "20", "--iterations", "3", "--batch-size", "8"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", port, "-m", "zerop_deploy", *args, "-o", str(tmp_path / "d.npz"),
         "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["images"] == 20  # one document: rank 0 only
    code, _, err = run(*args, "-o", tmp_path / "s.npz")
    assert code == 0, err
    with np.load(tmp_path / "d.npz") as d, np.load(tmp_path / "s.npz") as s:
        assert np.array_equal(d["images"], s["images"])
    assert not list(tmp_path.glob("*.partial*"))
