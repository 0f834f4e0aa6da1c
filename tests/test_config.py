import dataclasses
import json

import pytest

from zerop_deploy.config import (
    DataConfig,
    LayerOverride,
    QuantConfig,
    TrainConfig,
    load_overrides,
)
from zerop_deploy.errors import ConfigError


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"wbits": 3}, "wbits=3"),
        ({"abits": 16}, "abits=16"),
        ({"first_last_bits": 2}, "first_last"),
    ],
)
def test_quant_config_rejects_bits(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        QuantConfig(**kw)


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"steps": 0}, "--steps 0"),
        ({"steps": -5}, "--steps -5"),
        ({"steps": 10**9}, "--steps"),
        ({"time_budget_s": -1}, "--time-budget"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr": 2.0}, "--lr"),
        ({"device": "tpu"}, "--device tpu"),
        ({"checkpoint_every_s": -1}, "--checkpoint-every"),
    ],
)
def test_train_config_rejects_absurd_values(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        TrainConfig(**kw)


def test_configs_are_frozen_keyword_only_and_serialisable():
    q = QuantConfig(wbits=4, abits=8, overrides={"c": LayerOverride(wbits=8)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.wbits = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        QuantConfig(4, 4)  # type: ignore[misc]
    json.dumps([q.to_dict(), TrainConfig().to_dict(), DataConfig(proxy="p").to_dict()])


def test_bits_for_edges_and_overrides():
    q = QuantConfig(
        wbits=4,
        abits=4,
        first_last_bits=8,
        overrides={"a": LayerOverride(abits=8), "b": LayerOverride(skip=True)},
    )
    assert q.bits_for("x", edge=False) == (4, 4)
    assert q.bits_for("x", edge=True) == (8, 8)
    assert q.bits_for("a", edge=False) == (4, 8)
    assert q.bits_for("b", edge=False) is None


def test_load_overrides(tmp_path):
    p = tmp_path / "layers.json"
    p.write_text(json.dumps({"layers": {"conv1": {"wbits": 8}, "fc": {"skip": True}}}))
    assert load_overrides(p) == {"conv1": LayerOverride(wbits=8), "fc": LayerOverride(skip=True)}
    p.write_text(json.dumps({"layers": {"conv1": {"wbit": 8}}}))
    with pytest.raises(ConfigError, match="unknown keys"):
        load_overrides(p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_overrides(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_overrides(tmp_path / "missing.json")
