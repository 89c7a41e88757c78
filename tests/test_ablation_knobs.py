"""The kernel-normalisation and multi-scale ablation knobs (drift.normalization,
drift.feature_scales): config checks, the feature-set selection on a real encoder's
outputs, and short training runs that show each knob reaching the loss."""

from __future__ import annotations

import json
import typing

import pytest
import torch

from helpers import CONFIGS
from drifting_platform import config as config_lib
from drifting_platform.config import ConfigError, load_config
from drifting_platform.drift import NORMALIZATIONS
from drifting_platform.encoders import build_encoder, feature_scale, select_feature_sets
from drifting_platform.train import training_loop

DIGITS = CONFIGS / "digits.yaml"


# ----------------------------------------------------------------------------- config


def test_config_keys_defaults_and_names():
    d = config_lib.DriftConfig()
    assert d.normalization == "xy" and d.feature_scales == ("loc", "global", "patch2", "patch4")
    hints = typing.get_type_hints(config_lib.DriftConfig)
    assert typing.get_args(hints["normalization"]) == NORMALIZATIONS  # config and drift agree
    assert config_lib.FEATURE_SCALES == d.feature_scales
    cfg = load_config(DIGITS, "smoke", ["drift.normalization=none", "drift.feature_scales=[loc, global]"])
    assert cfg.drift.normalization == "none" and cfg.drift.feature_scales == ("loc", "global")
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "override, match",
    [
        ("drift.normalization=softmax", r"^drift\.normalization: 'softmax' is not one of"),
        ("drift.feature_scales=[]", r"^drift\.feature_scales: at least one scale"),
        ("drift.feature_scales=[loc, patch8]", r"^drift\.feature_scales\[1\]: 'patch8' is not one of"),
        ("drift.feature_scales=[loc, loc]", r"^drift\.feature_scales: a scale is listed twice"),
        ("drift.feature_scales=loc", r"^drift\.feature_scales: expected a list"),
    ],
)
def test_config_rejects_bad_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(DIGITS, "smoke", [override])


# ----------------------------------------------------------------------------- feature scales


def test_feature_scale_names():
    assert [feature_scale(f"s1.{s}") for s in ("loc", "mean", "std", "p2_mean", "p2_std", "p4_mean", "p4_std")] == [
        "loc", "global", "global", "patch2", "patch2", "patch4", "patch4",
    ]
    # sets that multiscale_features does not write have no scale
    for name in ("flat", "x", "global", "layer1_blk0", "layer1_blk0_mean", "layer1_blk0_std_2", "s1.p8_mean", ".loc"):
        assert feature_scale(name) is None, name


def test_select_feature_sets_on_random_cnn_digits_features():
    enc = build_encoder("random_cnn", (1, 8, 8), widths=(32, 64))  # digits.yaml's encoder
    feats = enc(torch.rand(3, 1, 8, 8))
    # stage maps 8x8 and 4x4: every scale exists at both stages, plus the unscaled input
    assert {feature_scale(k) for k in feats} == {None, "loc", "global", "patch2", "patch4"}
    assert select_feature_sets(feats, config_lib.FEATURE_SCALES) == feats
    ab = select_feature_sets(feats, ["loc", "global"])
    assert list(ab) == ["flat", "s1.loc", "s1.mean", "s1.std", "s2.loc", "s2.mean", "s2.std"]
    assert all(ab[k] is feats[k] for k in ab)  # the tensors themselves, in the encoder's order
    ac = select_feature_sets(feats, ["loc", "global", "patch2"])
    assert set(ac) - set(ab) == {"s1.p2_mean", "s1.p2_std", "s2.p2_mean", "s2.p2_std"}
    assert list(select_feature_sets(feats, ["patch4"])) == ["flat", "s1.p4_mean", "s1.p4_std", "s2.p4_mean", "s2.p4_std"]


def test_select_feature_sets_that_leaves_nothing_names_the_key():
    # no input set, and stage maps of 4x4 and 2x2 (first stride 2): only stage 1 has 4x4 patches
    enc = build_encoder("random_cnn", (1, 8, 8), widths=(4, 4), include_input=False, first_stride=2)
    names = enc.feature_shapes()
    assert list(select_feature_sets(names, ["patch4"])) == ["s1.p4_mean", "s1.p4_std"]
    enc1 = build_encoder("random_cnn", (1, 4, 4), widths=(4,), include_input=False, first_stride=2)  # one 2x2 map
    with pytest.raises(ConfigError, match=r"^drift\.feature_scales: \['patch4'\] selects none of the encoder's 5 feature sets"):
        select_feature_sets(enc1.feature_shapes(), ["patch4"])
    with pytest.raises(ConfigError, match=r"^drift\.feature_scales: 'patch8'"):
        select_feature_sets(names, ["patch8"])


# ----------------------------------------------------------------------------- training runs


def _run(tmp_path, name, *overrides):
    cfg = load_config(DIGITS, "smoke", ["train.steps=3", "train.log_every=3", "train.threads=1", *overrides])
    training_loop(cfg, tmp_path / name, progress=False, evaluate=False)
    (line,) = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return json.loads(line)


def test_training_sees_only_the_selected_feature_sets(tmp_path):
    full = _run(tmp_path, "all")
    ab = _run(tmp_path, "ab", "drift.feature_scales=[loc, global]")
    # random_cnn widths [32, 64] on 8x8 digits: flat + 2 stages x (loc, mean, std, 2 x p2, 2 x p4)
    assert full["feature_sets"] == 15 and ab["feature_sets"] == 7
    assert ab["loss"] != full["loss"]
    banked = _run(tmp_path, "ab-nobank", "drift.feature_scales=[loc, global]", "train.feature_bank=false")
    assert banked["feature_sets"] == 7 and banked["loss"] == pytest.approx(ab["loss"], rel=1e-5)


def test_empty_selection_fails_before_training(tmp_path):
    cfg = load_config(DIGITS, "smoke", [
        "encoder.kwargs={widths: [4], include_input: false, first_stride: 2}", "data.size=4",
        "drift.feature_scales=[patch4]",
    ])
    with pytest.raises(ConfigError, match=r"^drift\.feature_scales: .* selects none"):
        training_loop(cfg, tmp_path / "run", progress=False, evaluate=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_training_uses_the_normalization(tmp_path):
    runs = {n: _run(tmp_path, n, f"drift.normalization={n}") for n in NORMALIZATIONS}
    assert all(r["feature_sets"] == 15 for r in runs.values())
    raw = {n: r["drift_raw/tau_0.02"] for n, r in runs.items()}
    assert len(set(raw.values())) == 3, raw  # three different kernels reached the loss
