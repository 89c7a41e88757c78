"""End-to-end runs of the one-process trainer and the sampler (contracts 3 and 4)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import CONFIGS
from drifting_platform.config import ConfigError, load_config
from drifting_platform.train import TrainingDiverged, training_loop
from drifting_platform.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CLI = str(Path(sys.executable).parent / "drifting-platform")


def run_cli(*args, check=True):
    out = subprocess.run([CLI, *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} failed:\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    run_cli("train", str(CONFIGS / "toy_8gaussians.yaml"), "--preset", "smoke", "--out", str(out), "--quiet")
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    run_cli("train", str(CONFIGS / "digits.yaml"), "--preset", "smoke", "--out", str(out), "--quiet",
            "--set", "eval.cfg_scales=[1.0, 2.5]")
    return out


def test_toy_summary_and_files(toy_run):
    summary = json.loads((toy_run / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["seconds"] > 0
    assert 0 <= summary["modes_covered"] <= 8 and np.isfinite(summary["mmd"])
    lines = [json.loads(l) for l in (toy_run / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [20, 40, 60]
    assert all(np.isfinite(l["loss"]) and "spread_ratio" in l and "drift_raw/tau_0.5" in l for l in lines)
    assert (toy_run / "samples.png").stat().st_size > 1000


def test_digits_summary_has_image_metrics(digits_run):
    summary = json.loads((digits_run / "summary.json").read_text())
    assert summary["steps"] == 6
    assert summary["fid"] > 0 and np.isfinite(summary["kid"])
    # k-NN metrics, the classifier FID beside the headline, and which extractor it was
    assert all(0 <= summary[k] <= 1 for k in ("precision", "recall", "coverage")) and summary["density"] >= 0
    assert summary["fid_classifier"] > 0 and summary["fid_classifier"] != summary["fid"]
    assert summary["fid_extractor"].startswith("digits-div-v1-")
    # the CFG curve: alpha = 1 is the headline's own setting (same samples, same seed)
    assert summary["alpha_1/fid"] == pytest.approx(summary["fid"], rel=1e-9)
    assert summary["alpha_2.5/fid"] > 0 and 0 <= summary["alpha_2.5/recall"] <= 1
    assert summary["best_alpha"] in (1.0, 2.5)
    assert summary["fid_best_alpha"] == min(summary["alpha_1/fid"], summary["alpha_2.5/fid"])
    with np.load(digits_run / "samples.npz") as f:
        assert f["samples"].shape == (200, 1, 8, 8) and f["samples"].dtype == np.float32
        assert f["samples"].min() >= 0 and f["samples"].max() <= 1


def test_sample_contract(digits_run, tmp_path):
    out = tmp_path / "s.npz"
    run_cli("sample", str(digits_run), "--num", "25", "--out", str(out), "--cfg-scale", "2.0", "--seed", "3")
    with np.load(out) as f:
        s, l = f["samples"], f["labels"]
    assert s.shape == (25, 1, 8, 8) and s.dtype == np.float32 and l.dtype == np.int64
    assert np.bincount(l, minlength=10).max() - np.bincount(l, minlength=10).min() <= 1  # balanced
    assert 0 <= s.min() and s.max() <= 1
    again = tmp_path / "t.npz"
    run_cli("sample", str(digits_run), "--num", "25", "--out", str(again), "--cfg-scale", "2.0", "--seed", "3")
    with np.load(again) as f:
        np.testing.assert_array_equal(f["samples"], s)  # same seed, same samples
    other = tmp_path / "u.npz"
    run_cli("sample", str(digits_run), "--num", "25", "--out", str(other), "--cfg-scale", "1.0", "--seed", "3")
    with np.load(other) as f:
        assert not np.array_equal(f["samples"], s)  # alpha reaches the generator


def test_toy_sample_is_in_data_coordinates(toy_run, tmp_path):
    out = tmp_path / "s.npz"
    run_cli("sample", str(toy_run), "--num", "100", "--out", str(out))
    with np.load(out) as f:
        assert f["samples"].shape == (100, 2) and (f["labels"] == 0).all()


def test_resume_matches_uninterrupted_run(tmp_path):
    over = ["train.steps=8", "train.ckpt_every=4", "train.log_every=2", "sampling.n_gen=32", "sampling.n_pos=32"]
    full = load_config(CONFIGS / "toy_8gaussians.yaml", "smoke", over)
    training_loop(full, tmp_path / "full", progress=False, evaluate=False)
    half = load_config(CONFIGS / "toy_8gaussians.yaml", "smoke", [*over, "train.steps=4"])
    training_loop(half, tmp_path / "resumed", progress=False, evaluate=False)
    training_loop(full, tmp_path / "resumed", progress=False, evaluate=False)
    a = load_checkpoint(tmp_path / "full")
    b = load_checkpoint(tmp_path / "resumed")
    assert a["step"] == b["step"] == 8
    for k in a["generator"]:
        torch.testing.assert_close(a["generator"][k], b["generator"][k], rtol=1e-5, atol=1e-6)
    steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]  # one continuous history, no duplicates


def test_channels_last_trains_the_nchw_generator_up_to_rounding(tmp_path):
    # train.channels_last changes the layout of the conv weights, not the computation: a
    # run that resumes with the other layout continues it, and 6 steps of digits in either
    # layout end at the same weights (up to float rounding)
    over = ["train.steps=6", "train.ckpt_every=3", "train.log_every=3"]
    ckpt = {}
    for layout in ("true", "false"):
        cfg = load_config(CONFIGS / "digits.yaml", "smoke", [*over, f"train.channels_last={layout}"])
        training_loop(cfg, tmp_path / layout, progress=False, evaluate=False)
        ckpt[layout] = load_checkpoint(tmp_path / layout)["generator"]
    convs = [k for k, v in ckpt["true"].items() if v.dim() == 4]
    assert convs and all(ckpt["true"][k].is_contiguous(memory_format=torch.channels_last) for k in convs)
    assert all(ckpt["false"][k].is_contiguous() for k in convs)
    for k in ckpt["true"]:
        torch.testing.assert_close(ckpt["true"][k], ckpt["false"][k], rtol=1e-3, atol=1e-4)
    # resume the channels-last run's step-3 state in NCHW: same result as above
    half = load_config(CONFIGS / "digits.yaml", "smoke", [*over, "train.steps=3", "train.channels_last=true"])
    training_loop(half, tmp_path / "mixed", progress=False, evaluate=False)
    full = load_config(CONFIGS / "digits.yaml", "smoke", [*over, "train.channels_last=false"])
    training_loop(full, tmp_path / "mixed", progress=False, evaluate=False)
    mixed = load_checkpoint(tmp_path / "mixed")
    assert mixed["step"] == 6
    for k in ckpt["false"]:
        torch.testing.assert_close(mixed["generator"][k], ckpt["false"][k], rtol=1e-3, atol=1e-4)


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path)
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="not a drifting-platform checkpoint"):
        load_checkpoint(tmp_path)
    out = run_cli("sample", str(tmp_path), "--num", "4", "--out", str(tmp_path / "x.npz"), check=False)
    assert out.returncode != 0 and "not a drifting-platform checkpoint" in out.stderr


def test_checkpoint_of_other_config_is_not_resumed(tmp_path):
    cfg = load_config(CONFIGS / "toy_8gaussians.yaml", "smoke", ["train.steps=2"])
    training_loop(cfg, tmp_path, progress=False, evaluate=False)
    other = load_config(CONFIGS / "toy_8gaussians.yaml", "smoke", ["train.steps=4", "model.kwargs.hidden=64"])
    with pytest.raises(CheckpointError, match="different model"):
        training_loop(other, tmp_path, progress=False, evaluate=False)


def test_atomic_save_keeps_previous_on_failure(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "x": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"step": 2, "x": Unpicklable()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_divergence_names_step_and_metric(tmp_path):
    cfg = load_config(CONFIGS / "toy_8gaussians.yaml", "smoke", ["train.steps=50", "train.lr=1e30", "train.grad_clip=1e30", "train.warmup_steps=0"])
    with pytest.raises(TrainingDiverged, match=r"step \d+: \S+ is (nan|inf)"):
        training_loop(cfg, tmp_path, progress=False, evaluate=False)


def test_bad_config_fails_before_work(tmp_path):
    out = run_cli("train", str(CONFIGS / "digits.yaml"), "--preset", "smoke", "--out", str(tmp_path / "r"), "--set", "drift.temperatures=[0.05, -1]", check=False)
    assert out.returncode != 0 and "drift.temperatures[1]" in out.stderr
    assert not (tmp_path / "r").exists()
    cfg = load_config(CONFIGS / "digits.yaml", "smoke", ["sampling.n_classes=11"])
    with pytest.raises(ConfigError, match="sampling.n_classes"):
        training_loop(cfg, tmp_path / "r2", progress=False)


def test_paper_preset_runs_on_synthetic_prepared_latents(tmp_path):
    """The paper preset's code path (prepared latents streamed into class banks -> the
    release generator in a release Latent-MAE's features -> CFG, bf16) at toy sizes: the
    same preset with smaller banks, network widths and counts."""
    from drifting_platform.data.moments import write_moment_shards

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 96)
    m = np.concatenate([y[:, None, None, None] + 0.1 * rng.standard_normal((96, 4, 8, 8)), np.full((96, 4, 8, 8), -4.0)], 1).astype(np.float32)
    write_moment_shards(m, m[:, :, :, ::-1].copy(), y, tmp_path / "prepared", num_classes=4, shard_size=32)
    over = [
        f"data.path={tmp_path / 'prepared'}", "data.bank_size=8", "data.unc_bank_size=16", "data.push_per_step=8",
        "model.name=release-s/2", "encoder.source=null", "encoder.kwargs={base_channels: 32, layers: [1, 1, 1, 1]}",
        "sampling.n_classes=2", "sampling.n_gen=4", "sampling.n_pos=4", "sampling.n_unc=4",
        "train.steps=2", "train.device=cpu", "train.warmup_steps=1",
        "eval.num_samples=8", "eval.extractor=digits", "eval.inception_weights=null", "eval.every=0", "eval.cfg_scales=[]",
    ]
    cfg = load_config(CONFIGS / "digits.yaml", "paper", over)
    assert (cfg.data.name, cfg.data.stream, cfg.model.name, cfg.encoder.name, cfg.train.precision) == ("prepared", True, "release-s/2", "release_mae", "bf16")
    summary = training_loop(cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 2
    assert "data_stream" in torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    with np.load(tmp_path / "run" / "samples.npz") as f:
        assert f["samples"].shape == (8, 4, 8, 8)


def test_paper_preset_without_data_env_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DRIFTING_DATA", raising=False)
    cfg = load_config(CONFIGS / "digits.yaml", "paper", ["train.device=cpu"])
    with pytest.raises(ConfigError, match="DRIFTING_DATA is not set"):
        training_loop(cfg, tmp_path, progress=False)


def test_lr_schedule():
    from drifting_platform.train.kit import lr_factor

    assert lr_factor(0, warmup=10, total=100) == 0.1
    assert lr_factor(9, warmup=10, total=100) == 1.0
    assert lr_factor(99, warmup=10, total=100) == 1.0
    assert lr_factor(10, warmup=10, total=100, schedule="cosine") == 1.0
    assert lr_factor(55, warmup=10, total=100, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(100, warmup=10, total=100, schedule="cosine") == pytest.approx(0.0)


def test_quick_eval_reports_fid_every_n_steps(tmp_path):
    cfg = load_config(CONFIGS / "digits.yaml", "smoke", ["train.log_every=2", "train.eval_every=4", "train.steps=8", "train.eval_samples=50"])
    training_loop(cfg, tmp_path, progress=False, evaluate=False)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [("fid" in l) for l in lines] == [False, True, False, True]
    assert all(l["fid"] > 0 for l in lines if "fid" in l)
    with pytest.raises(ConfigError, match="train.eval_every"):
        load_config(CONFIGS / "digits.yaml", "smoke", ["train.log_every=3", "train.eval_every=4"])


def test_class_spread_is_each_classes_std():
    from drifting_platform.train.objective import class_spread

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, 4, 4, generator=g) * torch.arange(1, 51).reshape(50, 1, 1, 1)
    y = torch.randint(0, 4, (50,), generator=g)
    y[0] = 4  # class 4 has one sample: no spread
    got = class_spread(x, y, 6, chunk=7)  # chunks that split classes; class 5 has none
    want = [x[y == c].reshape(-1, 48).std(dim=0).mean() if (y == c).sum() > 1 else torch.tensor(0.0) for c in range(6)]
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-6)


def test_one_positive_per_class_trains(tmp_path):
    # the paper's N_pos = 1 row: the spread diagnostic's reference is the whole class, not
    # the step's one positive (whose std is undefined and once stopped the run as "nan")
    cfg = load_config(CONFIGS / "digits.yaml", "smoke", ["train.steps=3", "train.log_every=1", "sampling.n_pos=1"])
    training_loop(cfg, tmp_path, progress=False, evaluate=False)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3]
    assert all(0.05 < l["spread_ratio"] < 20 for l in lines)
