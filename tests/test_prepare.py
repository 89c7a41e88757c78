"""The SD-VAE (diffusers' AutoencoderKL, small random weights) and `data prepare`: an
ImageFolder to Parquet shards of posterior moments (image and flip), resumable, with a
manifest; in this process and on Ray Data actors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from drifting_platform.data import vae as V
from drifting_platform.data.images import load_digits
from drifting_platform.data.prepare import (
    MANIFEST, PrepareError, center_crop_arr, list_image_folder, load_image, make_plan, read_manifest, to_model_space,
    write_image_folder,
)
from drifting_platform.data.moments import load_prepared, read_moment_shard
from drifting_platform.launch.prepare import run_prepare

CLI = [sys.executable, "-m", "drifting_platform.cli"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return V.write_random_vae(tmp_path_factory.mktemp("vae") / "tiny", seed=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """90 digits as 32x32 RGB PNGs in 10 class folders, plus one 48x40 photo-like image."""
    ds = load_digits(32)
    root = tmp_path_factory.mktemp("imagefolder") / "digits"
    x01 = ((ds.x[:90] + 1) / 2).numpy()
    write_image_folder(x01, ds.y[:90].numpy(), root)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "class_004" / "wide.jpg")
    return root


def _plan(root, out, vae_dir, **kw):
    kw.setdefault("resolution", 32)
    kw.setdefault("shard_size", 25)
    return make_plan(root, out, vae=str(vae_dir), vae_sha256=V.vae_files_sha256(vae_dir), **kw)


def test_vae_round_trip_shapes_scaling_and_identity(vae_dir, tmp_path):
    vae = V.load_vae(vae_dir)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    m = V.encode_moments(vae, x)
    assert m.shape == (3, 8, 16, 16)
    mean, logvar = V.split_moments(m)
    post = vae.encode(x).latent_dist
    torch.testing.assert_close(mean, post.mean)
    torch.testing.assert_close(logvar, post.logvar)
    # a draw is (mean + std eps) * 0.18215: its average over many draws is the scaled mean
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([V.sample_latents(m, V.SCALING_FACTOR, generator=g) for _ in range(400)])
    torch.testing.assert_close(draws.mean(0), mean * V.SCALING_FACTOR, atol=4 * float(torch.exp(0.5 * logvar).max()) * 0.18215 / 20 + 1e-4, rtol=0)
    assert not torch.equal(draws[0], draws[1])
    # decoding divides by the scaling factor: decode(z) == vae.decode(z / 0.18215), clamped
    z = mean * V.SCALING_FACTOR
    torch.testing.assert_close(V.decode_latents(vae, z), vae.decode(mean).sample.clamp(-1, 1))
    ident = vae.identity
    assert ident["scaling_factor"] == pytest.approx(0.18215) and ident["latent_channels"] == 4 and ident["downsample"] == 2
    other = V.write_random_vae(tmp_path / "other", seed=4)
    assert V.vae_files_sha256(other) != ident["sha256"]  # other weights, other identity


def test_vae_sources_fail_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(V.VAEError, match="not in the Hugging Face cache.*huggingface-cli download stabilityai/sd-vae-ft-mse"):
        V.resolve_vae_source("stabilityai/sd-vae-ft-mse")
    with pytest.raises(V.VAEError, match="no such folder"):
        V.resolve_vae_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(V.VAEError, match="no config.json"):
        V.resolve_vae_source(tmp_path / "empty")


def test_adm_center_crop():
    # box halvings of a nearest-upsampled image give the image back exactly
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((128, 128), Image.NEAREST)
    np.testing.assert_array_equal(center_crop_arr(big, 32), small)
    # a wide image: the short side is resized to the target and the centre kept
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, 32:64] = 255  # the middle third is white
    out = center_crop_arr(Image.fromarray(wide), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out.min() == 255  # only the centre survives
    # grayscale becomes RGB
    assert center_crop_arr(Image.fromarray(small[..., 0]), 16).shape == (16, 16, 3)


def test_image_folder_labels_follow_sorted_class_folders(folder):
    classes, items = list_image_folder(folder)
    assert classes == [f"class_{c:03d}" for c in range(10)]
    assert len(items) == 91
    for path, label in items:
        assert path.split(os.sep)[0] == classes[label]


def test_prepare_writes_moments_of_image_and_flip(folder, vae_dir, tmp_path):
    out = tmp_path / "prepared"
    plan = _plan(folder, out, vae_dir)
    res = run_prepare(plan, workers=0, progress=False)
    m = res["manifest"]
    assert m == read_manifest(out) and m["rows"] == 91 and m["failed"] == []
    assert m["num_classes"] == 10 and m["shape"] == [4, 16, 16] and m["moments_shape"] == [8, 16, 16]
    assert m["vae"]["sha256"] == V.vae_files_sha256(vae_dir) and m["resolution"] == 32
    _, items = list_image_folder(folder)
    truth = np.bincount([label for _, label in items], minlength=10)
    assert [m["counts"][str(c)] for c in range(10)] == truth.tolist()
    assert len(m["shards"]) == 4 and sorted(os.listdir(out)) == sorted(m["shards"] + [MANIFEST])
    # every shard holds a mix of classes (items are shuffled before sharding)
    cols, meta = read_moment_shard(str(out / m["shards"][0]), columns=("moments", "moments_flip", "label", "path"))
    assert len(set(cols["label"].tolist())) >= 5
    # a row is the VAE's posterior of the ADM crop of its image, and of the flipped crop
    vae = V.load_vae(vae_dir)
    path = cols["path"][0]
    x = to_model_space(load_image(folder / path, 32)[None])
    np.testing.assert_allclose(cols["moments"][0], V.encode_moments(vae, x)[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(cols["moments_flip"][0], V.encode_moments(vae, torch.flip(x, dims=[3]))[0].numpy(), atol=1e-5)
    assert not np.allclose(cols["moments"][0], cols["moments_flip"][0])
    # a rerun reuses every shard
    again = run_prepare(_plan(folder, out, vae_dir), workers=0, progress=False)
    assert again["written"] == 0 and again["skipped"] == [0, 1, 2, 3]
    # in memory: x is the scaled mean, draws flip and sample the posterior
    ds = load_prepared(out)
    assert len(ds) == 91 and ds.kind == "latent" and ds.num_classes == 10 and ds.shape == (4, 16, 16)
    torch.testing.assert_close(ds.x, ds.moments[:, :4] * 0.18215)
    g = torch.Generator().manual_seed(0)
    d1, d2 = ds.draw(torch.zeros(64, dtype=torch.long), g), ds.draw(torch.zeros(64, dtype=torch.long), g)
    assert not torch.equal(d1, d2)
    flip_mean = ds.moments_flip[0, :4] * 0.18215
    near = lambda d, ref: (d - ref).flatten(1).norm(dim=1) < (d - (flip_mean if ref is not flip_mean else ds.x[0])).flatten(1).norm(dim=1)  # noqa: E731
    picked_flip = near(d1, flip_mean)
    assert 10 < int(picked_flip.sum()) < 54  # both the image and its flip are drawn


def test_unreadable_images_skipped_and_counted_or_fatal(folder, vae_dir, tmp_path):
    broken = tmp_path / "with_broken"
    subprocess.run(["cp", "-r", str(folder), str(broken)], check=True)
    (broken / "class_002" / "broken.png").write_bytes(b"not an image")
    res = run_prepare(_plan(broken, tmp_path / "skip", vae_dir), workers=0, progress=False)
    assert res["manifest"]["rows"] == 91 and res["manifest"]["images"] == 92
    assert [f[0] for f in res["manifest"]["failed"]] == [os.path.join("class_002", "broken.png")]
    r = subprocess.run([*CLI, "data", "prepare", "imagefolder", str(broken), "--out", str(tmp_path / "fail"), "--vae", str(vae_dir),
                        "--resolution", "32", "--shard-size", "100", "--workers", "0", "--on-error", "fail", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "broken.png: cannot read the image" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "fail" / MANIFEST).exists()


def test_bad_input_fails_before_any_work(folder, vae_dir, tmp_path):
    cases = [
        ([str(tmp_path / "nope"), "--vae", str(vae_dir)], "nope: no such folder"),
        ([str(folder), "--vae", str(tmp_path / "novae")], "novae'?: no such folder"),
        ([str(tmp_path), "--vae", str(vae_dir)], "no class folders"),
    ]
    for args, msg in cases:
        out = tmp_path / "out"
        r = subprocess.run([*CLI, "data", "prepare", "imagefolder", *args, "--out", str(out), "--workers", "0"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        assert __import__("re").search(msg, r.stderr) and "Traceback" not in r.stderr
        assert not out.exists()
    with pytest.raises(PrepareError, match="shard_size"):
        _plan(folder, tmp_path / "x", vae_dir, shard_size=0)


def test_interrupted_prepare_resumes_to_byte_identical_shards(folder, vae_dir, tmp_path):
    args = ["data", "prepare", "imagefolder", str(folder), "--vae", str(vae_dir), "--resolution", "32", "--shard-size", "8",
            "--workers", "0", "--batch-size", "4", "-q"]
    ref = tmp_path / "whole"
    subprocess.run([*CLI, *args, "--out", str(ref)], check=True, capture_output=True, timeout=300)
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([*CLI, *args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("latents-*.parquet"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = sorted(p.name for p in out.glob("latents-*.parquet"))
    assert 3 <= len(first) < 12 and not (out / MANIFEST).exists()
    r = subprocess.run([*CLI, *args, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"reused {len(first)}" in r.stdout
    names = sorted(p.name for p in ref.glob("latents-*.parquet"))
    assert names == sorted(p.name for p in out.glob("latents-*.parquet")) and len(names) == 12
    for n in names:
        assert (ref / n).read_bytes() == (out / n).read_bytes(), n
    assert (ref / MANIFEST).read_bytes() == (out / MANIFEST).read_bytes()
    assert not list(out.glob(".*.tmp"))


def test_prepare_on_ray_data_actors(folder, vae_dir, tmp_path):
    """Two Ray Data actors on a local Ray: the same rows and shards as in-process (up to
    float rounding of another thread count), with a reported throughput."""
    ray = pytest.importorskip("ray")
    try:
        res = run_prepare(_plan(folder, tmp_path / "ray", vae_dir), workers=2, progress=False)
    finally:
        ray.shutdown()
    local = run_prepare(_plan(folder, tmp_path / "local", vae_dir), workers=0, progress=False)
    assert res["written"] == 4 and res["images_per_second"] > 0
    a, b = load_prepared(tmp_path / "ray"), load_prepared(tmp_path / "local")
    assert torch.equal(a.y, b.y)
    torch.testing.assert_close(a.moments, b.moments, atol=1e-4, rtol=0)
    assert json.loads((tmp_path / "ray" / MANIFEST).read_text())["counts"] == local["manifest"]["counts"]


# --------------------------------------------------------------------------- a sweep's `prepare:`


def _sweep_with_prepare(tmp_path, prepare: str):
    (tmp_path / "s.yaml").write_text(
        f"base: {os.path.abspath('experiments/configs/digits.yaml')}\npreset: smoke\n"
        f"rows: [{{name: a, set: {{drift.attraction_scale: 1.0}}}}]\nprepare: {prepare}\n")
    return tmp_path / "s.yaml"


def test_sweep_prepare_section_is_checked_before_anything_runs(tmp_path, isolated_home):
    from drifting_platform.launch.spec import SweepError, load_sweep

    cases = {
        "{images: no/such/folder}": r"^prepare\.images: 'no/such/folder' is neither",
        "{resolution: 30, vae_widths: [8, 8, 8]}": r"^prepare\.vae_widths: 3 widths downsample by 4, which does not divide prepare\.resolution 30",
        "{shard_size: 0}": r"^prepare\.shard_size: must be >= 1",
        "{imagez: digits}": r"^prepare\.imagez: unknown key",
    }
    for body, match in cases.items():
        with pytest.raises(SweepError, match=match):
            load_sweep(_sweep_with_prepare(tmp_path, body))
    assert not (isolated_home / "data").exists()  # nothing made by a refused file


def test_sweep_prepare_makes_the_latent_set_once_and_trials_train_on_it(tmp_path, isolated_home):
    from drifting_platform.eval.protocol import read_reference
    from drifting_platform.launch.data_jobs import prepare_sweep_data
    from drifting_platform.launch.spec import load_sweep

    spec = load_sweep(_sweep_with_prepare(tmp_path, "{images: digits, resolution: 16, vae_widths: [8, 16], limit: 60, shard_size: 25, workers: 0}"))
    out = spec.prepare_out
    assert out.startswith(str(isolated_home / "data" / "s-"))
    cfg = spec.trial_config(spec.trials[0].params)
    assert (cfg.data.name, cfg.data.path, cfg.data.size, cfg.eval.ref) == ("prepared", f"{out}/latents", None, f"{out}/reference.npz")
    # a process killed while writing the image folder leaves only a temporary folder behind
    os.makedirs(f"{out}/.images-999/digit_0")
    first = prepare_sweep_data(spec.prepare, out, workers=1)
    assert not first["reused"] and first["rows"] == 60 and first["shape"] == [4, 8, 8]
    assert sorted(os.listdir(f"{out}/images")) == [f"digit_{c}" for c in range(10)]
    ds = load_prepared(first["path"])
    assert len(ds) == 60 and ds.manifest["vae"]["source"] == f"{out}/vae"
    ref = read_reference(first["reference"])
    assert ref["features"].shape[0] == 60 and ref["mu"].shape == (ref["features"].shape[1],)
    stamp = os.path.getmtime(f"{out}/latents/{MANIFEST}")
    again = prepare_sweep_data(spec.prepare, out, workers=1)
    assert again["reused"] and os.path.getmtime(f"{out}/latents/{MANIFEST}") == stamp
    # a different setting is a different set
    other = load_sweep(_sweep_with_prepare(tmp_path, "{images: digits, resolution: 16, vae_widths: [8, 16], limit: 50}"))
    assert other.prepare_out != out
