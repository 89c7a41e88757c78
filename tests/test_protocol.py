"""The ImageNet evaluation protocol: FID against a reference-statistics file, Inception Score
and precision / recall, checked against direct SciPy / NumPy computations; torch-fidelity's
Inception architecture with random weights saved to a file; the `evaluate` command on a
latent run (decoded by its SD-VAE), in this process and on Ray actors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from drifting_platform.config import load_config
from drifting_platform.data import vae as V
from drifting_platform.data.images import load_digits
from drifting_platform.data.prepare import make_plan, write_image_folder
from drifting_platform.eval.metrics import precision_recall
from drifting_platform.eval.protocol import (
    ProtocolExtractor, ReferenceError, inception_score, precision_recall_blocked, protocol_metrics, read_reference, to_uint8_rgb,
    write_random_inception, write_reference,
)
from drifting_platform.launch.prepare import run_prepare
from drifting_platform.train.loop import training_loop

CLI = [sys.executable, "-m", "drifting_platform.cli"]


def scipy_fid(a: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def numpy_is(logits: np.ndarray, splits: int) -> tuple[float, float]:
    scores = []
    for part in np.array_split(logits, splits):
        p = np.exp(part - part.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        py = p.mean(0)
        scores.append(np.exp(np.mean([np.sum(pi * (np.log(pi) - np.log(py))) for pi in p])))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_against_numpy_and_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((500, 20)) * 3
    ours = inception_score(logits, 10)
    assert ours == pytest.approx(numpy_is(logits, 10), rel=1e-9)
    tf = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    assert ours == pytest.approx((tf["inception_score_mean"], tf["inception_score_std"]), rel=1e-6)
    # one confident class per image, all classes equally used: IS = number of classes
    sharp = np.eye(20)[np.arange(1000) % 20] * 50
    assert inception_score(sharp, 10)[0] == pytest.approx(20, rel=1e-3)


def test_blocked_precision_recall_equals_the_full_computation():
    rng = np.random.default_rng(1)
    g, r = rng.standard_normal((300, 16)), rng.standard_normal((250, 16)) + 0.5
    assert precision_recall_blocked(g, r, k=3, block=64) == precision_recall(g, r, k=3)


def test_reference_files_are_checked(tmp_path):
    np.savez(tmp_path / "bad.npz", mu=np.zeros(4))
    with pytest.raises(ReferenceError, match="needs arrays 'mu' and 'sigma'"):
        read_reference(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ReferenceError, match="not a readable"):
        read_reference(tmp_path / "junk.npz")
    ref = write_reference(tmp_path / "ref.npz", np.random.default_rng(0).standard_normal((50, 4)))
    with pytest.raises(ReferenceError, match="another extractor"):
        protocol_metrics(np.zeros((30, 8)), None, ref)


def test_random_inception_features_give_scipy_fid(tmp_path):
    weights = write_random_inception(tmp_path / "inception.pth", seed=0)
    ext = ProtocolExtractor("inception", inception_weights=weights)
    ds = load_digits(32)
    imgs = to_uint8_rgb((ds.x[:96] + 1) / 2)
    f_ref, _ = ext.many(torch.split(imgs[:48], 16))
    f_gen, logits = ext.many(torch.split(imgs[48:], 16))
    assert f_gen.shape == (48, 2048) and logits.shape == (48, 1008)
    ref = write_reference(tmp_path / "ref.npz", f_ref)
    m = protocol_metrics(f_gen, logits, ref)
    assert m["fid"] == pytest.approx(scipy_fid(f_gen, ref["mu"], ref["sigma"]), rel=1e-3)
    assert m["is"] == pytest.approx(numpy_is(logits, 10)[0], rel=1e-6)
    assert (m["precision"], m["recall"]) == precision_recall(f_gen, ref["features"], k=3)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """A prepared ImageFolder (digits as RGB, tiny random VAE) and a short run on it."""
    tmp = tmp_path_factory.mktemp("latent-run")
    ds = load_digits(32)
    root = write_image_folder(((ds.x[:300] + 1) / 2).numpy(), ds.y[:300].numpy(), tmp / "folder")
    vae_dir = V.write_random_vae(tmp / "vae")
    plan = make_plan(root, tmp / "prepared", vae=str(vae_dir), vae_sha256=V.vae_files_sha256(vae_dir), resolution=32, shard_size=100)
    run_prepare(plan, workers=0, progress=False)
    cfg = load_config("experiments/configs/digits.yaml", "smoke", [
        "data.name=prepared", f"data.path={tmp / 'prepared'}", "data.size=null", "model.name=conv-s", "encoder.name=random_cnn",
        "encoder.kwargs={widths: [8, 16]}", "train.steps=4", "eval.num_samples=100", "eval.extractor=digits"])
    summary = training_loop(cfg, tmp / "run", progress=False)
    return {"tmp": tmp, "run": tmp / "run", "summary": summary, "vae": vae_dir, "folder": root}


def test_latent_runs_are_decoded_for_metrics_grids_and_samples(latent_run):
    s = latent_run["summary"]
    assert np.isfinite(s["fid"]) and "latent_mean_abs_diff" not in s
    z = np.load(latent_run["run"] / "samples.npz")
    assert z["samples"].shape == (100, 3, 32, 32) and z["latents"].shape == (100, 4, 16, 16)
    assert 0.0 <= z["samples"].min() and z["samples"].max() <= 1.0
    assert (latent_run["run"] / "samples.png").stat().st_size > 0


def test_evaluate_command_matches_direct_scipy_fid(latent_run, tmp_path):
    from drifting_platform.inference import build_protocol_runner
    from drifting_platform.train.protocol import chunk_labels

    weights = write_random_inception(tmp_path / "inception.pth", seed=1)
    ext = ProtocolExtractor("inception", inception_weights=weights)
    ds = load_digits(32)
    f_ref, _ = ext.many(torch.split(to_uint8_rgb((ds.x[300:400] + 1) / 2), 50))
    write_reference(tmp_path / "ref.npz", f_ref)
    out = tmp_path / "eval.json"
    r = subprocess.run([*CLI, "evaluate", str(latent_run["run"]), "--num", "60", "--cfg-scale", "1.0", "--cfg-scale", "2.0", "--ref", str(tmp_path / "ref.npz"),
                        "--inception-weights", weights, "--batch-size", "30", "--out", str(out), "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())["metrics"]
    assert "best: cfg" in r.stdout and res["best_alpha"] in (1.0, 2.0)
    # the same samples (balanced labels, chunk seeds), decoded, through the same Inception: SciPy's FID
    runner = build_protocol_runner(str(latent_run["run"]), extractor="inception", inception_weights=weights, batch_size=30)
    for a in (1.0, 2.0):
        feats = np.concatenate([runner.chunk_features(lab, a, i)[0] for i, lab in enumerate(chunk_labels(60, 10))])
        ref = read_reference(tmp_path / "ref.npz")
        assert res[f"alpha_{a:g}/fid"] == pytest.approx(scipy_fid(feats, ref["mu"], ref["sigma"]), rel=1e-3)
        assert 1.0 <= res[f"alpha_{a:g}/is"] and 0 <= res[f"alpha_{a:g}/precision"] <= 1


def test_evaluate_on_ray_actors_gives_the_same_numbers(latent_run, tmp_path):
    from drifting_platform.eval.protocol import ProtocolExtractor as PE
    from drifting_platform.launch.evaluate import run_evaluation

    ds = load_digits(32)
    f_ref, _ = PE("digits").many([to_uint8_rgb((ds.x[300:500] + 1) / 2)])
    write_reference(tmp_path / "ref.npz", f_ref)
    kw = dict(num=80, cfg_scales=[1.0], ref=str(tmp_path / "ref.npz"), extractor="digits", chunk=20, progress=False)
    here = run_evaluation(str(latent_run["run"]), workers=0, **kw)
    import ray

    try:
        there = run_evaluation(str(latent_run["run"]), workers=2, **kw)
    finally:
        ray.shutdown()
    for k in ("alpha_1/fid", "alpha_1/is", "alpha_1/precision", "alpha_1/recall"):
        assert there[k] == pytest.approx(here[k], rel=1e-5, abs=1e-9), k


def test_evaluate_refuses_bad_input_before_work(latent_run, tmp_path):
    np.savez(tmp_path / "ref.npz", mu=np.zeros(3), sigma=np.eye(3))
    cases = [
        (["--ref", str(tmp_path / "missing.npz"), "--extractor", "digits"], "no such reference-statistics file"),
        (["--ref", str(tmp_path / "ref.npz")], "needs a local weights file"),
        (["--ref", str(tmp_path / "ref.npz"), "--inception-weights", str(tmp_path / "nope.pth")], "nope.pth: no such file"),
    ]
    for args, msg in cases:
        r = subprocess.run([*CLI, "evaluate", str(latent_run["run"]), *args], capture_output=True, text=True, timeout=120,
                           env={**__import__("os").environ, "DRIFTING_INCEPTION_WEIGHTS": ""})
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([*CLI, "evaluate", str(tmp_path), "--ref", str(tmp_path / "ref.npz"), "--extractor", "digits"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "not a run directory" in r.stderr
