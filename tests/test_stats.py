import math

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from zerop_deploy.demo import onnx_bytes
from zerop_deploy.load.to_torch import convert_model
from zerop_deploy.proxy.stats import (
    bn_modules,
    bns_distance,
    observe_bns,
    output_score,
    rank_candidates,
    scoring_method,
    spearman,
    stored_bns,
)


def _domain(n: int, seed: int) -> torch.Tensor:
    """A 'training domain': smooth reddish gradients with a little texture, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 16)
    base = ramp[None, None, :, None] * torch.rand(n, 1, 1, 1, generator=g)
    colour = torch.tensor([0.8, 0.3, 0.2]).view(1, 3, 1, 1)
    x = base * colour + 0.05 * torch.rand(n, 3, 16, 16, generator=g) + 0.1
    return x.clamp(0, 1)


def _trained_bn_model(x: torch.Tensor) -> onnx.ModelProto:
    """A small CNN whose BN running statistics are exactly those of ``x`` (cumulative average)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8, momentum=None),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16, momentum=None),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    net.train()
    with torch.no_grad():
        net(x)
    return onnx.load_from_string(onnx_bytes(net.eval(), (1, 3, 16, 16), keep_bn=True))


@pytest.fixture(scope="module")
def trained():
    x = _domain(512, seed=1)
    proto = _trained_bn_model(x)
    return proto, convert_model(proto).eval(), x


def test_stored_statistics_are_read_by_node_and_hooked(trained):
    proto, teacher, _ = trained
    stored = stored_bns(proto)
    assert [len(s.mean) for s in stored] == [8, 16]
    assert set(bn_modules(teacher, proto)) == {s.node for s in stored}
    assert scoring_method(proto) == "bns"


def test_the_training_images_themselves_are_at_distance_zero(trained):
    proto, teacher, x = trained
    observed = observe_bns(teacher, proto, [x[:256], x[256:]])
    assert len(observed) == 2
    # running_var is the unbiased variance of 512*16*16 values: within 1e-3 of the biased one
    assert bns_distance(observed, stored_bns(proto)) < 2e-3


def test_ranking_puts_fresh_domain_images_before_noise_and_gray(trained, tmp_path):
    from zerop_deploy.data.sources import open_source

    proto, teacher, _ = trained
    sets = {
        "domain": _domain(200, seed=7),
        "noise": torch.rand(200, 3, 16, 16),
        "gray": torch.full((200, 3, 16, 16), 0.5) + 0.02 * torch.rand(200, 3, 16, 16),
    }
    sources = []
    for name, x in sets.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, images=(x * 255).round().byte().permute(0, 2, 3, 1).numpy())
        sources.append(open_source(path))
    seen = []
    method, rows = rank_candidates(
        teacher, proto, sources, (3, 16, 16), samples=128, on_done=seen.append
    )
    assert method == "bns" and len(seen) == 3
    assert [r["candidate"] for r in rows][0].endswith("domain.npz")
    assert rows[0]["distance"] < 0.5 * rows[1]["distance"]
    assert all(r["images"] == 128 and r["total_images"] == 200 for r in rows)
    assert all(r["plain_distance"] > 0 for r in rows)


def test_plain_sum_is_dominated_by_wide_layers_normalised_is_not():
    from zerop_deploy.proxy.stats import ObservedBn, StoredBn

    narrow = StoredBn("a", np.zeros(4), np.ones(4))
    wide = StoredBn("b", np.zeros(400), 100 * np.ones(400))  # big activations, many channels
    off_narrow = [
        ObservedBn("a", np.ones(4), np.ones(4)),
        ObservedBn("b", np.zeros(400), 100 * np.ones(400)),
    ]
    off_wide = [
        ObservedBn("a", np.zeros(4), np.ones(4)),
        ObservedBn("b", 100 * np.ones(400), 100 * np.ones(400)),
    ]
    stored = [narrow, wide]
    # both sets are one stored std off in one layer: the normalised distance says so
    assert bns_distance(off_narrow, stored) == pytest.approx(bns_distance(off_wide, stored))
    assert bns_distance(off_wide, stored, normalised=False) > 100 * bns_distance(
        off_narrow, stored, normalised=False
    )


def test_dead_channels_cannot_blow_the_distance_up():
    from zerop_deploy.proxy.stats import ObservedBn, StoredBn

    stored = [StoredBn("a", np.zeros(3), np.array([1.0, 1.0, 1e-6]))]
    # a dead channel (stored std ~0) that a candidate wakes up slightly: without the floor at
    # 1 % of the layer's median std this would be ~1e4
    observed = [ObservedBn("a", np.array([0.0, 0.0, 0.01]), np.array([1.0, 1.0, 0.01]))]
    assert bns_distance(observed, stored) < 5


def test_output_score_prefers_confident_and_even_predictions():
    k = 10
    even_confident = np.eye(k)[np.arange(100) % k] * 20
    one_class = np.tile(np.eye(k)[0] * 20, (100, 1))
    hesitant = np.random.default_rng(0).normal(0, 0.01, (100, k))
    scores = [output_score(z)["distance"] for z in (even_confident, one_class, hesitant)]
    assert scores[0] < 0.01 and scores[1] > 0.99 and scores[2] > 0.8
    s = output_score(even_confident)
    assert s["confidence"] == pytest.approx(1.0) and s["evenness"] == pytest.approx(1.0)


def test_folded_model_uses_the_output_method(cnn_folded):
    assert stored_bns(cnn_folded) == [] and scoring_method(cnn_folded) == "output"


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1], [2])


def test_scoring_batches_are_capped_by_pixels_and_give_the_same_distance(
    trained, tmp_path, monkeypatch
):
    """Big inputs are scored in smaller forward passes (memory); the distance stays the same."""
    import zerop_deploy.data.batches as batches
    from zerop_deploy.data.sources import open_source

    proto, teacher, _ = trained
    path = tmp_path / "domain.npz"
    x = _domain(100, seed=3)
    np.savez(path, images=(x * 255).round().byte().permute(0, 2, 3, 1).numpy())
    seen: list[int] = []
    hook = teacher.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    whole = rank_candidates(teacher, proto, [open_source(path)], (3, 16, 16), samples=100)[1]
    assert max(seen) == 100
    seen.clear()
    monkeypatch.setattr(batches, "INFERENCE_PIXELS", 16 * 16 * 30)
    split = rank_candidates(teacher, proto, [open_source(path)], (3, 16, 16), samples=100)[1]
    hook.remove()
    assert max(seen) == 30 and sum(seen) == 100
    assert split[0]["distance"] == pytest.approx(whole[0]["distance"], rel=1e-4)
