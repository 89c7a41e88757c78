"""Strict configs: unknown keys and wrong types name their path; ranges are enforced."""

import pytest

from drifting_platform.config import (
    Config,
    ConfigError,
    from_dict,
    load_config,
    parse_override,
    preset_names,
    resolve_raw,
    to_dict,
)
from helpers import CONFIGS


def test_defaults_round_trip():
    cfg = Config()
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "raw, path",
    [
        ({"trian": {}}, "trian"),
        ({"train": {"stepz": 3}}, "train.stepz"),
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"train": {"steps": 1.5}}, "train.steps"),
        ({"train": {"betas": [0.9]}}, "train.betas"),
        ({"drift": {"temperatures": [0.05, "hot"]}}, "drift.temperatures[1]"),
        ({"train": {"precision": "fp8"}}, "train.precision"),
        ({"cfg": {"enabled": "yes"}}, "cfg.enabled"),
        ({"model": {"kwargs": [1, 2]}}, "model.kwargs"),
    ],
)
def test_unknown_keys_and_wrong_types(raw, path):
    with pytest.raises(ConfigError) as exc:
        from_dict(raw)
    assert str(exc.value).startswith(path + ":")


@pytest.mark.parametrize(
    "raw, path",
    [
        ({"drift": {"temperatures": [0.05, 0.0]}}, "drift.temperatures[1]"),
        ({"drift": {"temperatures": [-0.2]}}, "drift.temperatures[0]"),
        ({"drift": {"temperatures": []}}, "drift.temperatures"),
        ({"sampling": {"n_pos": 0}}, "sampling.n_pos"),
        ({"sampling": {"n_classes": 0}}, "sampling.n_classes"),
        ({"sampling": {"n_gen": 1}}, "sampling.n_gen"),
        ({"sampling": {"n_unc": -1}}, "sampling.n_unc"),
        ({"cfg": {"gamma": 1.0}}, "cfg.gamma"),
        ({"cfg": {"gamma": -0.1}}, "cfg.gamma"),
        ({"cfg": {"enabled": True}, "sampling": {"n_unc": 0}}, "sampling.n_unc"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay"),
        ({"eval": {"cfg_scale": 0.5}}, "eval.cfg_scale"),
    ],
)
def test_range_checks(raw, path):
    with pytest.raises(ConfigError) as exc:
        from_dict(raw)
    assert str(exc.value).startswith(path + ":")


def test_valid_gamma_and_int_as_float():
    cfg = from_dict({"cfg": {"gamma": 0.5}, "train": {"lr": 1}})
    assert cfg.cfg.gamma == 0.5 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_yaml_exponent_without_dot_is_a_number():
    # PyYAML reads `1e-3` as a string; configs written that way must still work
    assert from_dict(parse_override("train.lr=1e-3")).train.lr == 1e-3
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a number"):
        from_dict({"train": {"lr": "fast"}})


def test_override_parsing():
    assert parse_override("train.steps=5") == {"train": {"steps": 5}}
    assert parse_override("drift.temperatures=[0.1, 0.2]") == {"drift": {"temperatures": [0.1, 0.2]}}
    assert parse_override("data.name=digits") == {"data": {"name": "digits"}}
    with pytest.raises(ConfigError):
        parse_override("train.steps")


@pytest.mark.parametrize("name", ["toy_8gaussians", "toy_checkerboard", "digits"])
def test_shipped_configs_and_presets_load(name):
    path = CONFIGS / f"{name}.yaml"
    presets = preset_names(path)
    assert {"smoke", "local"} <= set(presets)
    for preset in [None, *presets]:
        cfg = load_config(path, preset)
        assert isinstance(cfg, Config)


def test_paper_preset_is_table8():
    cfg = load_config(CONFIGS / "digits.yaml", "paper")
    assert cfg.model.name == "release-b/2" and cfg.data.name == "prepared" and cfg.data.stream is True
    assert (cfg.data.bank_size, cfg.data.unc_bank_size) == (128, 1000)
    assert (cfg.encoder.name, cfg.encoder.source) == ("release_mae", "hf://mae_latent_256")
    assert cfg.train.precision == "bf16" and cfg.train.device == "cuda"
    e = cfg.eval
    assert (e.every, e.protocol_samples, e.cfg_scales) == (5000, 50000, (1.0, 1.5, 2.0, 2.5, 3.0, 3.5))
    s, t = cfg.sampling, cfg.train
    assert (s.n_classes, s.n_gen, s.n_pos, s.n_unc) == (64, 64, 64, 16)
    assert (t.lr, t.weight_decay, t.warmup_steps, t.grad_clip, t.steps, t.ema_decay) == (2e-4, 0.01, 5000, 2.0, 30000, 0.999)
    assert t.betas == (0.9, 0.95)
    assert cfg.drift.temperatures == (0.02, 0.05, 0.2)
    assert (cfg.cfg.alpha_min, cfg.cfg.alpha_max) == (1.0, 4.0)


def test_overrides_apply_after_preset_and_are_checked():
    path = CONFIGS / "digits.yaml"
    cfg = load_config(path, "smoke", ["train.steps=2", "drift.temperatures=[0.05]"])
    assert cfg.train.steps == 2 and cfg.drift.temperatures == (0.05,)
    with pytest.raises(ConfigError, match=r"^train\.stepz:"):
        load_config(path, "smoke", ["train.stepz=2"])
    with pytest.raises(ConfigError, match=r"^drift\.temperatures\[0\]:"):
        load_config(path, None, ["drift.temperatures=[0]"])
    with pytest.raises(ConfigError, match="presets.nope"):
        load_config(path, "nope")


def test_broken_preset_is_reported_even_when_not_selected(tmp_path):
    text = (CONFIGS / "digits.yaml").read_text().replace("steps: 30000", "steps: -1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"presets\.paper: train\.steps"):
        load_config(bad, "smoke")


def test_resolve_raw_keeps_base_intact():
    raw = {"train": {"steps": 10}, "presets": {"smoke": {"train": {"steps": 1}}}}
    assert resolve_raw(raw, "smoke")["train"]["steps"] == 1
    assert raw["train"]["steps"] == 10


def test_empty_mapping_override_resets_kwargs():
    cfg = load_config(CONFIGS / "digits.yaml", None, ["encoder.name=pixel", "encoder.kwargs={}"])
    assert cfg.encoder.name == "pixel" and cfg.encoder.kwargs == {}
    cfg = load_config(CONFIGS / "digits.yaml", None, ["encoder.kwargs.widths=[8]"])
    assert cfg.encoder.kwargs == {"widths": [8]}
