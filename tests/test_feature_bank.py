"""train.feature_bank: the data set's encoder features computed once give the same training
as re-encoding positives and unconditional negatives every step, and are really used."""

import json

import pytest
import torch

from helpers import CONFIGS
from drifting_platform.config import ConfigError, load_config
from drifting_platform.encoders import build_encoder
from drifting_platform.encoders.random_cnn import RandomCNNEncoder
from drifting_platform.train import training_loop
from drifting_platform.train.checkpoint import load_checkpoint
from drifting_platform.train.feature_bank import build_feature_bank, plan_feature_bank

# distinct batch sizes: 4 x 8 generated, 4 x 6 positives, 7 unconditional samples (and bank chunks)
SMALL = ["train.steps=4", "train.log_every=2", "sampling.n_pos=6", "sampling.n_unc=7", "train.threads=1"]


@pytest.fixture(scope="module")
def mae_dir(tmp_path_factory):
    """A local learned-encoder directory (MAE layout: ResNet with GroupNorm and a mask
    channel) for 8x8 digits, with seeded random weights: what `pretrain_loop` writes."""
    from drifting_platform.encoders.backbone import ResNetBackbone
    from drifting_platform.encoder_artifact import ENCODER_FORMAT

    out = tmp_path_factory.mktemp("mae8")
    torch.manual_seed(0)
    backbone = ResNetBackbone(2, (8, 16), blocks=1, stem_stride=1)
    torch.save(backbone.state_dict(), out / "weights.pt")
    meta = {"format": ENCODER_FORMAT, "objective": "mae", "backbone": backbone.spec, "input_shape": [1, 8, 8], "mask_channel": True}
    (out / "encoder.json").write_text(json.dumps(meta))
    return out


def _train(tmp_path, name, overrides):
    cfg = load_config(CONFIGS / "digits.yaml", "smoke", [*SMALL, *overrides])
    summary = training_loop(cfg, tmp_path / name, progress=False, evaluate=False)
    return summary, load_checkpoint(tmp_path / name / "checkpoint.pt")["generator"]


@pytest.mark.parametrize(
    "encoder",
    [
        ["encoder.name=pixel", "encoder.kwargs={}"],
        ["encoder.name=random_cnn", "encoder.kwargs={widths: [16, 32]}", "data.size=16"],
        ["encoder.name=random_cnn", "encoder.kwargs={widths: [16, 32]}", "train.precision=bf16"],
        ["encoder.name=mae", "encoder.source=MAE_DIR", "encoder.kwargs={}"],
    ],
    ids=["pixel", "random_cnn-16px", "random_cnn-bf16", "learned-mae"],
)
def test_bank_on_and_off_train_the_same_generator(tmp_path, encoder, mae_dir):
    encoder = [e.replace("MAE_DIR", str(mae_dir)) for e in encoder]
    on, w_on = _train(tmp_path, "on", [*encoder, "train.feature_bank=true"])
    off, w_off = _train(tmp_path, "off", [*encoder, "train.feature_bank=false"])
    assert on["feature_bank"]["enabled"] and on["feature_bank"]["megabytes"] > 0
    assert not off["feature_bank"]["enabled"]
    assert w_on.keys() == w_off.keys()
    for k in w_on:
        torch.testing.assert_close(w_on[k], w_off[k], rtol=1e-5, atol=1e-6, msg=f"generator parameter {k}")
    # the logged losses agree as well
    lines = lambda d: [json.loads(l) for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    for a, b in zip(lines("on"), lines("off")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)


def test_bank_is_used_only_generated_samples_are_encoded_per_step(tmp_path, monkeypatch):
    sizes: list[int] = []
    original = RandomCNNEncoder.forward

    def counting_forward(self, x):  # a wrapper: the real forward runs
        sizes.append(int(x.shape[0]))
        return original(self, x)

    monkeypatch.setattr(RandomCNNEncoder, "forward", counting_forward)
    steps, n_gen, n_pos, n_unc = 4, 4 * 8, 4 * 6, 7
    _train(tmp_path, "on", ["train.feature_bank=true"])
    assert sizes.count(n_gen) == steps  # one call per step, on the generated samples
    assert n_pos not in sizes and n_unc not in sizes  # data samples never re-encoded per step
    built = [n for n in sizes if n not in (1, n_gen)]  # 1: the size probe (feature_shapes)
    assert sum(built) == 1797  # the bank: every digit once
    sizes.clear()
    _train(tmp_path, "off", ["train.feature_bank=false"])
    assert sizes.count(n_gen) == sizes.count(n_pos) == sizes.count(n_unc) == steps and len(sizes) == 3 * steps


def test_auto_skips_a_bank_over_budget_and_true_refuses_it(tmp_path):
    summary, _ = _train(tmp_path, "auto", ["train.feature_bank=auto", "train.feature_bank_max_mb=0.01", "train.steps=2"])
    assert not summary["feature_bank"]["enabled"] and "feature_bank_max_mb" in summary["feature_bank"]["reason"]
    with pytest.raises(ConfigError, match=r"train.feature_bank: true, but the features of the 1797 data samples take .* MB, over train.feature_bank_max_mb"):
        _train(tmp_path, "true", ["train.feature_bank=true", "train.feature_bank_max_mb=0.01"])
    assert not (tmp_path / "true" / "checkpoint.pt").exists()  # refused before any step


def test_non_bankable_encoder():
    enc = build_encoder("random_cnn", (1, 8, 8), widths=(4,))
    assert plan_feature_bank("auto", 100.0, enc, 10)[0]
    enc.bankable = False  # e.g. an encoder with random crops or batch statistics
    use, why = plan_feature_bank("auto", 100.0, enc, 10)
    assert not use and "bankable = False" in why
    with pytest.raises(ConfigError, match="train.feature_bank: true, but encoder RandomCNNEncoder declares"):
        plan_feature_bank(True, 100.0, enc, 10)
    assert plan_feature_bank(False, 100.0, build_encoder("pixel", (1, 8, 8)), 10) == (False, "off (train.feature_bank: false)")
    unfrozen = build_encoder("random_cnn", (1, 8, 8), widths=(4,))
    unfrozen.convs[0].weight.requires_grad_(True)
    with pytest.raises(ConfigError, match="trainable parameters"):
        plan_feature_bank(True, 100.0, unfrozen, 10)


def test_bank_rows_equal_direct_features():
    enc = build_encoder("random_cnn", (1, 16, 16), widths=(8, 16))
    x = torch.randn(300, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    bank = build_feature_bank(enc, x, chunk=128)
    idx = torch.tensor([0, 5, 127, 128, 299])
    with torch.no_grad():
        direct = enc(x[idx])
    assert bank.keys() == direct.keys()
    for k in direct:
        assert bank[k].dtype == torch.float32
        torch.testing.assert_close(bank[k][idx], direct[k].float(), rtol=1e-5, atol=1e-6)


def test_feature_bank_config_keys():
    cfg = load_config(CONFIGS / "digits.yaml", "smoke")
    assert cfg.train.feature_bank == "auto" and cfg.train.feature_bank_max_mb == 2048
    with pytest.raises(ConfigError, match=r"train.feature_bank: expected true/false or 'auto', got 'sometimes'"):
        load_config(CONFIGS / "digits.yaml", "smoke", ["train.feature_bank=sometimes"])
    with pytest.raises(ConfigError, match="train.feature_bank_max_mb: must be > 0"):
        load_config(CONFIGS / "digits.yaml", "smoke", ["train.feature_bank_max_mb=0"])


def test_resume_across_bank_settings(tmp_path):
    """Banking is not part of a checkpoint's identity: a run resumes with the other setting."""
    cfg = load_config(CONFIGS / "digits.yaml", "smoke", [*SMALL, "train.steps=2", "train.feature_bank=false"])
    training_loop(cfg, tmp_path / "r", progress=False, evaluate=False)
    more = load_config(CONFIGS / "digits.yaml", "smoke", [*SMALL, "train.feature_bank=true"])
    summary = training_loop(more, tmp_path / "r", progress=False, evaluate=False)
    assert summary["steps"] == 4 and summary["feature_bank"]["enabled"]
