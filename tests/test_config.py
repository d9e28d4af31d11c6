"""The config system: YAML + overrides -> typed dataclasses, clear errors, a stable hash, round trips."""

from __future__ import annotations

import pytest
import yaml

from abaw.config import (
    Config,
    ConfigError,
    config_yaml,
    load_config,
    parse_override,
    save_config,
    stable_hash,
    with_overrides,
)


def test_defaults_and_yaml_inheritance():
    cfg = load_config("configs/test.yaml")
    assert isinstance(cfg, Config)
    # test.yaml <- demo.yaml <- default.yaml: each layer's values arrive.
    assert cfg.features.visual.allow_random is True  # from demo.yaml
    assert cfg.train.window == 64  # from test.yaml
    assert cfg.features.audio.preset == "logmel"  # from default.yaml


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-3", "model.variant=rjca", "train.max_epochs=3", "seed=7"])
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.model.variant == "rjca" and cfg.train.max_epochs == 3 and cfg.seed == 7


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown key"),
        ("train.max_epochs=abc", "expected an integer"),
        ("features.visual.allow_random=maybe", "expected true/false"),
        ("train", "key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_yaml_key_names_the_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  varient: rjca\n")
    with pytest.raises(ConfigError, match=r"config\.model: unknown key.*varient"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("configs/demo.yaml", ["train.lr=2e-4"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["train"]["lr"] == pytest.approx(2e-4)
    assert not list(tmp_path.glob("*.tmp"))


def test_hash_is_stable_and_sensitive():
    a = load_config(None)
    assert stable_hash(a.features.visual) == stable_hash(load_config(None).features.visual)
    b = with_overrides(a, ["features.visual.fill=zeros"])
    assert stable_hash(a.features.visual) != stable_hash(b.features.visual)


def test_parse_override_nests_and_parses_yaml():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert "seed: 0" in config_yaml(Config())


def test_demo_release_location_follows_cache_root(tmp_path):
    cfg = load_config(None, [f"cache_root={tmp_path}"])
    assert cfg.release_name == "demo"
    assert cfg.data_root == (tmp_path / "demo" / "release").resolve()
    real = load_config(None, [f"data.root={tmp_path / 'aff'}", f"cache_root={tmp_path}"])
    assert real.release_name == "aff" and real.index_path.parent == (tmp_path / "aff").resolve()
