"""The release generator and Latent-MAE as parts of the platform: presets at the release's
sizes, the flat-noise interface, bf16 autocast, training / sampling through the usual loop
and CLI, model.init, and the release_mae encoder. (Golden agreement: tests/test_release.py.)"""

import json
import math

import numpy as np
import pytest
import torch

from drifting_platform.config import ConfigError, load_config
from drifting_platform.encoders import build_encoder
from drifting_platform.models import ReleaseDiTGenerator, build_generator
from drifting_platform.models.release_dit import swiglu_hidden

DIGITS = "experiments/configs/digits.yaml"


def perturb_(module, std=0.05, seed=1):
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=rng) * std)
    return module


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,shape,hidden,depth,patch", [
    ("release-b/2", (4, 32, 32), 768, 12, 2),
    ("release-l/2", (4, 32, 32), 1024, 24, 2),
    ("release-b/16", (3, 256, 256), 768, 12, 16),
    ("release-l/16", (3, 256, 256), 1024, 24, 16),
])
def test_release_presets_have_the_release_sizes(name, shape, hidden, depth, patch):
    with torch.device("meta"):  # sizes only: no memory for L/16's weights
        g = build_generator(name, data_shape=shape, num_classes=1001)
    c = g.config
    assert (c["hidden_size"], c["depth"], c["patch_size"], c["cond_dim"]) == (hidden, depth, patch, hidden)
    assert (c["n_cls_tokens"], c["noise_classes"], c["noise_coords"]) == (16, 64, 32)
    assert all(c[k] for k in ("use_qknorm", "use_swiglu", "use_rope", "use_rmsnorm"))
    assert g.noise_dim == math.prod(shape) + 32
    # SwiGLU width: int(2/3 * 4D) rounded up to 32 (768 -> 2048, 1024 -> 2752)
    assert g.blocks[0].mlp.w1.out_features == swiglu_hidden(hidden, 4.0) == {768: 2048, 1024: 2752}[hidden]
    assert g.pos_embed.shape == (1, (shape[1] // patch) ** 2, hidden)


def test_release_b2_parameter_count():
    # the ablation generator of the paper's Table 8: ~133M parameters at 32x32x4 latents
    with torch.device("meta"):
        g = build_generator("release-b/2", data_shape=(4, 32, 32), num_classes=1001)
    assert 125e6 < n_params(g) < 140e6


def test_flat_noise_maps_to_image_noise_and_uniform_styles():
    g = perturb_(build_generator("release-s/2", data_shape=(1, 8, 8), num_classes=10, temperature=0.7))
    z = torch.randn(4000, g.noise_dim, generator=torch.Generator().manual_seed(0))
    x, styles = g.split_noise(z)
    assert torch.allclose(x, z[:, :64].reshape(-1, 1, 8, 8) * 0.7)
    k = g.config["noise_classes"]
    assert styles.shape == (4000, g.config["noise_coords"]) and styles.min() == 0 and styles.max() == k - 1
    counts = torch.bincount(styles.reshape(-1), minlength=k).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.1  # uniform over the k embeddings
    # forward(z) is release_forward with those style indices
    lab, a = torch.arange(6) % 10, torch.linspace(1, 4, 6)
    assert torch.allclose(g(z[:6], lab, a), g.release_forward(x[:6], lab, a, styles[:6]), atol=1e-6)


def test_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(0)
    g = perturb_(build_generator("release-s/2", data_shape=(4, 8, 8), num_classes=10), std=0.02)
    z = torch.randn(16, g.noise_dim)
    lab, a = torch.arange(16) % 10, torch.full((16,), 1.5)
    with torch.no_grad():
        ref = g(z, lab, a)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = g(z, lab, a)
    assert low.dtype == torch.bfloat16
    rel = (low.float() - ref).abs().max() / ref.abs().max()
    assert 0 < rel < 0.05  # bf16 has 8 mantissa bits; adaLN and attention stay in float32


def test_release_mae_encoder_random_weights_feature_sets():
    enc = build_encoder("release_mae", (1, 16, 16), base_channels=32, layers=[1, 1, 1, 1])
    feats = enc(torch.rand(3, 1, 16, 16))
    assert feats["global"].shape == (3, 1, 256) and feats["norm_x"].shape == (3, 1, 1)
    assert feats["conv1"].shape == (3, 256, 32) and feats["layer4"].shape == (3, 4, 256)
    assert feats["conv1_mean_4"].shape == (3, 16, 32) and "layer4_mean_4" not in feats  # 2x2 map
    assert not any(p.requires_grad for p in enc.parameters())
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    sum(v.sum() for v in enc(x).values()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="channels"):
        build_encoder("release_mae", (3, 16, 16), in_channels=4, base_channels=32)


def test_model_init_config_errors():
    with pytest.raises(ConfigError, match="model.init"):
        load_config(DIGITS, "smoke", ["model.name=conv-s", "model.init=/nonexistent"])
    with pytest.raises(ConfigError, match="model.kwargs"):
        load_config(DIGITS, "smoke", ["model.name=release-s/2", "model.init=/x", "model.kwargs={depth: 2}"])


def _write_converted(gen: ReleaseDiTGenerator, out):
    """A converted release folder (what `release convert` writes) for a generator of ours."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(out / "model.safetensors"))
    (out / "release.json").write_text(json.dumps({
        "format": "drifting-release/1", "kind": "gen", "model_config": gen.config,
        "identity": {"name": "test-artifact", "sha256": "0" * 64},
    }))


@pytest.mark.slow
def test_train_from_model_init_and_sample(tmp_path):
    from drifting_platform.train.loop import training_loop

    torch.manual_seed(3)
    gen = perturb_(build_generator("release-s/2", data_shape=(1, 8, 8), num_classes=10))
    art = tmp_path / "artifact"
    _write_converted(gen, art)
    cfg = load_config(DIGITS, "smoke", ["model.name=release-s/2", f"model.init={art}", "train.steps=1", "train.lr=1e-12", "train.warmup_steps=0"])
    summary = training_loop(cfg, tmp_path / "run", progress=False, evaluate=False)
    assert summary["model_init"]["name"] == "test-artifact"
    from drifting_platform.inference import load_run

    run = load_run(tmp_path / "run")
    for k, v in gen.state_dict().items():  # lr 0: the EMA generator is the artifact
        assert torch.allclose(run.generator.state_dict()[k], v, atol=1e-9), k
    bad = load_config(DIGITS, "smoke", ["model.name=release-s/2", f"model.init={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="model.init: .*missing"):
        training_loop(bad, tmp_path / "run2", progress=False, evaluate=False)
    assert not (tmp_path / "run2" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_release_generator_trains_in_the_loop(tmp_path):
    from drifting_platform.train.loop import training_loop

    cfg = load_config(DIGITS, "smoke", ["model.name=release-s/2", "train.steps=30", "train.log_every=10", "encoder.name=release_mae",
                                         "encoder.kwargs={}", "encoder.kwargs.base_channels=32", "encoder.kwargs.layers=[1, 1, 1, 1]", "train.warmup_steps=5"])
    summary = training_loop(cfg, tmp_path, progress=False)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert math.isfinite(summary["fid"])
    assert np.load(tmp_path / "samples.npz")["samples"].shape[1:] == (1, 8, 8)


@pytest.mark.slow
def test_sweep_rows_with_release_generator_encoder_and_init(tmp_path, monkeypatch):
    """The release models in a real Ray Tune sweep: the release generator, the release MAE as
    the drift's encoder, and a row initialised from a converted release artifact."""
    import textwrap
    from pathlib import Path

    ray = pytest.importorskip("ray")
    from drifting_platform.launch.sweep import run_sweep

    monkeypatch.setenv("DRIFTING_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    torch.manual_seed(5)
    art = tmp_path / "artifact"
    _write_converted(perturb_(build_generator("release-s/2", data_shape=(1, 8, 8), num_classes=10)), art)
    digits = Path(__file__).resolve().parents[1] / DIGITS
    sweep = tmp_path / "release.yaml"
    sweep.write_text(textwrap.dedent(f"""
        name: release_rows
        base: {digits}
        preset: smoke
        set: [eval.num_samples=100, train.log_every=3, model.name=release-s/2]
        rows:
          - {{name: "release generator", set: {{}}}}
          - {{name: "release MAE features", set: {{encoder.name: release_mae, encoder.kwargs: {{}}}}}}
          - {{name: "from artifact", set: {{model.init: "{art}"}}}}
        resources: {{cpus_per_trial: 1, workers: 1}}
        max_concurrent: 2
        metric: {{name: fid, mode: min}}
    """))
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(sweep, out_root=tmp_path / "sweeps", verbose=0)
    finally:
        ray.shutdown()
    by = {t.label: t for t in res.trials}
    for t in res.trials:
        assert t.status == "FINISHED", t.error
        assert t.metrics["fid"] > 0 and t.metrics["steps"] == 6
    summaries = {k: json.loads((Path(t.trial_dir) / "summary.json").read_text()) for k, t in by.items()}
    assert summaries["from artifact"]["model_init"]["name"] == "test-artifact"
    assert "model_init" not in summaries["release generator"]
    assert summaries["release MAE features"]["encoder"]["random_init"] is True
