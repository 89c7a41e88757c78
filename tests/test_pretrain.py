"""Encoder pre-training jobs end to end: config, loop, artifact, MLflow registry, loading by name.

A real SQLite MLflow store in a temporary folder; real digits; the smoke presets.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import REPO

from drifting_platform.config import ConfigError, load_config
from drifting_platform.pretrain.config import config_hash, load_pretrain_config

pytestmark = pytest.mark.usefixtures("isolated_home")  # a fresh DRIFTING_HOME and SQLite store per test

ENC = REPO / "experiments" / "encoders"
DIGITS = REPO / "experiments" / "configs" / "digits.yaml"


def _cfg(name: str, *sets: str, preset: str = "smoke"):
    return load_pretrain_config(ENC / f"{name}.yaml", preset, ["train.threads=1", *sets])


@pytest.mark.parametrize("name", ["simclr_digits32", "moco_digits32", "mae_digits32"])
@pytest.mark.parametrize("preset", ["smoke", "local"])
def test_shipped_pretrain_configs_load(name, preset):
    cfg = _cfg(name, preset=preset)
    assert cfg.data.name == "digits" and cfg.data.size == 32
    assert cfg.objective.name == name.split("_")[0]


@pytest.mark.parametrize(
    "sets, match",
    [
        (["objective.name=byol"], r"objective\.name"),
        (["backbone.widths=[]"], r"backbone\.widths"),
        (["train.batch_size=1"], r"train\.batch_size"),
        (["objective.kwargs.mask_ratio=1.5"], r"objective\.kwargs\.mask_ratio"),
        (["name=a/b"], r"^name"),
        (["train.nope=1"], r"train\.nope: unknown key"),
    ],
)
def test_bad_pretrain_config_names_the_key(sets, match):
    with pytest.raises(ConfigError, match=match):
        _cfg("mae_digits32", *sets)


def test_config_hash_ignores_logging_but_not_weights():
    a = _cfg("mae_digits32")
    assert config_hash(a) == config_hash(_cfg("mae_digits32", "train.log_every=1", "train.threads=2"))
    assert config_hash(a) != config_hash(_cfg("mae_digits32", "backbone.widths=[16,32,64]"))
    assert config_hash(a) != config_hash(_cfg("mae_digits32", "seed=1"))


def test_pretrain_resume_continues_exactly(tmp_path):
    """Stopped at its checkpoint and resumed, a run ends with the weights of an unbroken one."""
    from drifting_platform.pretrain.loop import pretrain_loop

    cfg = _cfg("moco_digits32", "train.steps=4", "train.ckpt_every=2")
    pretrain_loop(cfg, tmp_path / "full", progress=False, evaluate=False)
    half = _cfg("moco_digits32", "train.steps=4", "train.ckpt_every=2")
    import dataclasses

    first = dataclasses.replace(half, train=dataclasses.replace(half.train, steps=2))
    pretrain_loop(first, tmp_path / "split", progress=False, evaluate=False)
    pretrain_loop(half, tmp_path / "split", progress=False, evaluate=False)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["objective"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["objective"]
    assert a.keys() == b.keys() and any("queue" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m: f"{k}: {m}")


def test_pretrain_register_and_load_by_name(tmp_path):
    """pretrain -> MLflow run + registered version -> models:/NAME/latest loads, frozen, with
    the multi-scale feature sets of every stage; a second identical config is found by hash."""
    from drifting_platform import tracking as T
    from drifting_platform.encoders import build_encoder
    from drifting_platform.launch.pretrain import ensure_encoder, run_pretrain

    cfg = _cfg("mae_digits32", "finetune.steps=2")
    res = run_pretrain(cfg, tmp_path / "run", progress=False)
    s, reg = res["summary"], res["registered"]
    assert s["steps"] == 6 and 0.0 <= s["probe_accuracy"] <= 1.0
    meta = json.loads((tmp_path / "run" / "encoder" / "encoder.json").read_text())
    assert meta["objective"] == "mae" and meta["mask_channel"] and meta["finetuned"] and meta["input_shape"] == [1, 32, 32]
    assert reg["uri"] == "models:/mae-digits32-w32/1"

    # the run: params, metric history (both phases), artifacts, tag naming the version
    client = T.registry._registry_client()
    run = client.get_run(reg["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["backbone.widths"] == "[32, 64, 128]"
    assert run.data.tags[T.TAG_REGISTERED] == reg["uri"]
    assert [m.step for m in client.get_metric_history(reg["run_id"], "loss")] == [2, 4]
    assert [m.step for m in client.get_metric_history(reg["run_id"], "ft_loss")] == [6]
    assert {a.path for a in client.list_artifacts(reg["run_id"], "encoder")} == {"encoder/encoder.json", "encoder/weights.pt"}
    mv = client.get_model_version("mae-digits32-w32", "1")
    assert mv.tags[T.TAG_CONFIG_HASH] == config_hash(cfg) and mv.run_id == reg["run_id"]

    enc = build_encoder("mae", (1, 32, 32), source="models:/mae-digits32-w32/latest")
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    assert enc.provenance()["pinned"] == "models:/mae-digits32-w32/1"
    shapes = enc.feature_shapes()
    assert shapes["flat"] == (1, 1024)
    # stem stride 2 (the 32x32 configs): stages at 16x16, 8x8, 4x4
    assert shapes["s1.loc"] == (16 * 16, 32) and shapes["s2.loc"] == (8 * 8, 64) and shapes["s3.loc"] == (4 * 4, 128)
    assert shapes["s1.p4_mean"] == (16, 32) and shapes["s3.mean"] == (1, 128) and shapes["s3.p2_std"] == (4, 128) and shapes["s3.p4_mean"] == (1, 128)
    # the loaded weights are the trained ones
    w = torch.load(tmp_path / "run" / "encoder" / "weights.pt", weights_only=True)
    for k, v in enc.backbone.state_dict().items():
        torch.testing.assert_close(v, w[k])
    # differentiable in its input (the drift loss's gradient reaches the generator)
    x = torch.zeros(2, 1, 32, 32, requires_grad=True)
    enc(x)["s2.mean"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

    # the same config again: reused, not retrained; another config: a new version
    again = ensure_encoder(cfg, progress=False)
    assert again["reused"] and again["uri"] == reg["uri"]
    other = ensure_encoder(_cfg("mae_digits32", "finetune.steps=2", "seed=3"), progress=False)
    assert not other["reused"] and other["uri"] == "models:/mae-digits32-w32/2"
    assert T.resolve_model_uri("models:/mae-digits32-w32/latest") == ("mae-digits32-w32", 2)

    # wrong objective name or wrong input shape: clear errors naming the source
    with pytest.raises(ValueError, match="holds a 'mae' encoder"):
        build_encoder("simclr", (1, 32, 32), source="models:/mae-digits32-w32/1")
    with pytest.raises(ValueError, match=r"trained on inputs \(1, 32, 32\)"):
        build_encoder("mae", (1, 16, 16), source="models:/mae-digits32-w32/1")
    with pytest.raises(Exception, match="mae-digits32-w32"):
        build_encoder("mae", (1, 32, 32), source="models:/mae-digits32-w32/9")


def test_learned_encoder_configs_are_checked():
    with pytest.raises(ConfigError, match="encoder.source"):
        load_config(DIGITS, "smoke", ["encoder.name=mae", "encoder.kwargs={}"])
    with pytest.raises(ConfigError, match="encoder.source"):
        load_config(DIGITS, "smoke", ["encoder.source=/tmp/x"])


def test_drifting_run_with_a_local_encoder_records_it(tmp_path):
    from drifting_platform.pretrain.loop import pretrain_loop
    from drifting_platform.train import training_loop

    pretrain_loop(_cfg("simclr_digits32"), tmp_path / "enc", progress=False)
    cfg = load_config(DIGITS, "smoke", [
        "data.size=32", "encoder.name=simclr", "encoder.kwargs={}", f"encoder.source={tmp_path / 'enc' / 'encoder'}",
        "train.steps=2", "eval.num_samples=50", "train.threads=1",
    ])
    summary = training_loop(cfg, tmp_path / "drift", progress=False)
    assert summary["encoder"]["objective"] == "simclr" and summary["encoder"]["pinned"] == str((tmp_path / "enc" / "encoder").resolve())
    assert summary["fid"] > 0
    missing = load_config(DIGITS, "smoke", ["data.size=32", "encoder.name=simclr", "encoder.kwargs={}", f"encoder.source={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="encoder.source.*encoder.json"):
        training_loop(missing, tmp_path / "drift2", progress=False)


def _encoder_sweep(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "enc_sweep.yaml"
    p.write_text(textwrap.dedent(f"""
        name: enc_sweep
        base: {DIGITS}
        preset: smoke
        set: [data.size=32, eval.num_samples=100, train.threads=1]
        resources: {{cpus_per_trial: 1, workers: 1}}
        max_concurrent: 2
        metric: {{name: fid, mode: min}}
    """) + textwrap.dedent(body))
    return p


@pytest.mark.parametrize(
    "body, match",
    [
        ("rows:\n  - {name: a, encoder: nope}\n", r"rows\[0\]\.encoder: 'nope' is not a key"),
        (f"encoders:\n  m: {{config: {ENC}/missing.yaml}}\nrows:\n  - {{name: a, encoder: m}}\n", r"encoders\.m\.config: config file not found"),
        (f"encoders:\n  m: {{config: {ENC}/mae_digits32.yaml, set: [backbone.blocks=0]}}\nrows:\n  - {{name: a, encoder: m}}\n", r"encoders\.m: backbone\.blocks"),
        (f"encoders:\n  m: {{config: {ENC}/mae_digits32.yaml, bogus: 1}}\nrows:\n  - {{name: a, encoder: m}}\n", r"encoders\.m\.bogus: unknown key"),
        (f"encoders:\n  m: {{config: {ENC}/mae_digits32.yaml}}\nrows:\n  - {{name: a, encoder: m, set: {{encoder.name: pixel}}}}\n", r"rows\[0\]\.set\.encoder\.name"),
        (f"encoders:\n  m: {{config: {ENC}/mae_digits32.yaml}}\n  n: {{config: {ENC}/mae_digits32.yaml}}\nrows:\n  - {{name: a, encoder: m}}\n", r"encoders\.n: registers 'mae-digits32-w32'"),
    ],
)
def test_encoder_sweep_errors_before_ray(tmp_path, body, match):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    from drifting_platform.launch.spec import SweepError
    from drifting_platform.launch.sweep import run_sweep

    with pytest.raises(SweepError, match=match):
        run_sweep(_encoder_sweep(tmp_path, body), out_root=tmp_path / "s", tracker=False)
    assert not ray.is_initialized()


def test_encoder_sweep_pretrains_then_pins_versions(tmp_path):
    """A sweep with learned-encoder rows: encoders pre-trained once (as Ray tasks), every
    child run records the concrete registered version; a second sweep reuses them."""
    ray = pytest.importorskip("ray")
    from drifting_platform import tracking as T
    from drifting_platform.launch.sweep import run_sweep

    sweep = _encoder_sweep(tmp_path, f"""
        encoders:
          mae: {{config: {ENC}/mae_digits32.yaml, set: [name=mae-t-w16, "backbone.widths=[16,32]"]}}
          simclr: {{config: {ENC}/simclr_digits32.yaml, set: [name=simclr-t]}}
        rows:
          - {{name: pixel, set: {{encoder.name: pixel, encoder.kwargs: {{}}}}}}
          - {{name: MAE w16, encoder: mae}}
          - {{name: SimCLR, encoder: simclr}}
    """)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(sweep, out_root=tmp_path / "sweeps", verbose=0)
        assert [t.status for t in res.trials] == ["FINISHED"] * 3, [t.error for t in res.trials]
        by_label = {t.label: t for t in res.trials}
        assert by_label["MAE w16"].overrides["encoder.source"] == "models:/mae-t-w16/1"
        assert by_label["SimCLR"].overrides["encoder.source"] == "models:/simclr-t/1"
        client = T.registry._registry_client()
        for label, model in (("MAE w16", "mae-t-w16"), ("SimCLR", "simclr-t")):
            run = client.get_run(by_label[label].run_id)
            assert run.data.tags["drifting.encoder_model"] == model and run.data.tags["drifting.encoder_version"] == "1"
            assert run.data.params["encoder.source"] == f"models:/{model}/1"
            assert run.data.tags[T.TAG_PARENT] == res.parent_run_id
        parent = client.get_run(res.parent_run_id)
        assert parent.data.params["encoder.mae"] == "models:/mae-t-w16/1"
        pre = client.get_experiment_by_name(T.ENCODER_EXPERIMENT)
        assert len(client.search_runs([pre.experiment_id])) == 2

        again = run_sweep(sweep, out_root=tmp_path / "sweeps", verbose=0)  # reuse: no new versions
        assert {t.overrides.get("encoder.source") for t in again.trials} == {None, "models:/mae-t-w16/1", "models:/simclr-t/1"}
        assert len(client.search_runs([pre.experiment_id])) == 2
    finally:
        ray.shutdown()


def _mnist_root_from_digits(root: Path) -> Path:
    """A torchvision MNIST root (raw idx files) holding scikit-learn's real digits at 28x28."""
    import struct

    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:400]).float().unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    labels = d.target[:400].astype(np.uint8)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            with open(raw / f"{split}-{kind}-ubyte", "wb") as f:
                f.write(struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())
    return root


def test_mnist_pipeline_from_a_local_torchvision_root(tmp_path, monkeypatch):
    """experiments/configs/mnist.yaml end to end on a local torchvision root: pre-train an
    MAE on the set's own pixels, register it, drift in its features (no download anywhere)."""
    from drifting_platform.launch.pretrain import run_pretrain
    from drifting_platform.train import training_loop

    root = _mnist_root_from_digits(tmp_path / "tv")
    monkeypatch.setenv("DRIFTING_TORCHVISION_ROOT", str(root))
    pcfg = _cfg("mae_digits32", "name=mae-mnist32-w16", "data.name=mnist", "data.root=${DRIFTING_TORCHVISION_ROOT}", "backbone.widths=[16,32,64]")
    reg = run_pretrain(pcfg, tmp_path / "enc", progress=False)["registered"]
    assert reg["uri"] == "models:/mae-mnist32-w16/1"
    cfg = load_config(REPO / "experiments" / "configs" / "mnist.yaml", "smoke", [
        "encoder.name=mae", "encoder.kwargs={}", f"encoder.source={reg['uri']}", "eval.num_samples=60",
    ])
    summary = training_loop(cfg, tmp_path / "run", progress=False)
    assert summary["fid"] > 0 and summary["encoder"]["pinned"] == reg["uri"]
    assert (tmp_path / "run" / "samples.png").is_file()
    monkeypatch.delenv("DRIFTING_TORCHVISION_ROOT")
    with pytest.raises(ConfigError, match="DRIFTING_TORCHVISION_ROOT"):
        training_loop(cfg, tmp_path / "run2", progress=False)
