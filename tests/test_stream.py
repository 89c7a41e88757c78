"""Streaming class banks over prepared shards (the release's per-class ring buffers): bounded
memory, per-rank splits, fresh draws, resuming mid-stream; and training on prepared latents
in memory and streamed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drifting_platform.config import load_config
from drifting_platform.data.moments import load_prepared, moment_files, prepared_bytes, write_moment_shards
from drifting_platform.data.stream import StreamingClassBanks
from drifting_platform.train.loop import training_loop

SHAPE = (8, 4, 4)  # moments of 4 x 4 x 4 latents


def _synthetic(out, n, *, num_classes=10, shard_size=100, seed=0):
    """n rows; class c has mean c in every latent channel, log-variance -4, and the flip's
    moments are the image's plus 100 (so a draw shows which one it came from)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    m = np.empty((n, *SHAPE), np.float32)
    m[:, :4] = y[:, None, None, None] + 0.01 * rng.standard_normal((n, 4, 4, 4))
    m[:, 4:] = -4.0
    mf = m.copy()
    mf[:, :4] += 100.0
    write_moment_shards(m, mf, y, out, num_classes=num_classes, shard_size=shard_size)
    return moment_files(out)[0]


def _banks(files, **kw):
    args = dict(num_classes=10, moments_shape=SHAPE, scale=1.0, n_classes=4, n_pos=6, n_unc=5, bank_size=16, unc_bank_size=40, push_per_step=10)
    args.update(kw)
    return StreamingClassBanks(files, **args)


def test_memory_is_bounded_by_the_buffers_not_the_data(tmp_path):
    small = _banks(_synthetic(tmp_path / "a", 1_000))
    large = _banks(_synthetic(tmp_path / "b", 20_000))
    assert small.memory_bytes() == large.memory_bytes() == (10 * 16 + 40) * 2 * int(np.prod(SHAPE)) * 4
    assert prepared_bytes(tmp_path / "b") == 20 * prepared_bytes(tmp_path / "a") > 10 * large.memory_bytes()
    large.fill()
    for step in range(300):  # 3000 rows pushed: more than a shard, fewer than the set
        large.sample(step)
    # at most one shard is held besides the buffers
    assert large._rows["both"].shape[0] <= 100 and large.pushed == large.state()["pushed"] > 3000


def test_draws_are_class_true_fresh_and_use_both_flips(tmp_path):
    b = _banks(_synthetic(tmp_path / "d", 2_000))
    b.fill()
    assert (b.count >= 6).all()
    seen_flip, seen_plain = 0, 0
    for step in range(20):
        batch = b.sample(step)
        assert batch.pos.shape == (4, 6, 4, 4, 4) and batch.unc.shape == (5, 4, 4, 4)
        assert len(set(batch.classes.tolist())) == 4
        means = batch.pos.mean(dim=(2, 3, 4))  # [4, 6]: class c (or c + 100 for a flip)
        cls = batch.classes.float().unsqueeze(1)
        flip = (means - cls - 100).abs() < 0.5
        plain = (means - cls).abs() < 0.5
        assert (flip | plain).all()  # every positive is of its group's class
        seen_flip += int(flip.sum())
        seen_plain += int(plain.sum())
    assert seen_flip > 100 and seen_plain > 100
    a, c = b.sample(100), b.sample(100)  # same step twice: same classes, fresh posterior noise
    assert torch.equal(a.classes, c.classes)
    assert not torch.equal(a.pos, c.pos)


def test_ranks_stream_disjoint_shards_and_get_distinct_classes(tmp_path):
    files = _synthetic(tmp_path / "r", 2_000)
    r0, r1 = _banks(files, rank=0, world=2), _banks(files, rank=1, world=2)
    assert set(r0.files).isdisjoint(r1.files) and len(r0.files) + len(r1.files) == len(files)
    r0.fill()
    r1.fill()
    for step in range(5):
        a, c = r0.sample(step), r1.sample(step)
        assert len(a.classes) == len(c.classes) == 2
        assert set(a.classes.tolist()).isdisjoint(c.classes.tolist())
    with pytest.raises(ValueError, match="would stream none"):
        _banks(files[:1], rank=1, world=2)


def test_resume_lands_where_an_uninterrupted_stream_is(tmp_path):
    files = _synthetic(tmp_path / "s", 3_000)
    whole = _banks(files)
    whole.fill()
    states = {}
    for step in range(250):  # 2500 rows of the 3000 (30 shards of 100), past many shard boundaries
        whole.sample(step)
        states[step + 1] = whole.state()
    for step in (1, 120, 250):
        again = _banks(files)
        here = again.resume(step, expected=states[step])
        assert here == states[step]
        assert (again.count >= 6).all()
    # a second resume from a resumed stream: the same position as uninterrupted
    resumed = _banks(files)
    resumed.resume(120)
    for step in range(120, 250):
        resumed.sample(step)
    assert resumed.state() == states[250]
    wrong = dict(states[120], pushed=states[120]["pushed"] + 1)
    with pytest.raises(ValueError, match="does not reach the checkpoint"):
        _banks(files).resume(120, expected=wrong)
    # epochs wrap: a stream longer than the data keeps going, in a new order
    long = _banks(files, push_per_step=100)
    long.fill()
    for step in range(40):
        long.sample(step)
    assert long.state()["epoch"] >= 1


def _config(path, stream, steps, **over):
    sets = ["data.name=prepared", f"data.path={path}", "data.size=null", f"data.stream={str(stream).lower()}", "data.bank_size=16",
            "data.unc_bank_size=40", "data.push_per_step=10", f"train.steps={steps}", "train.ckpt_every=3", "train.log_every=3",
            "model.name=conv-s", "encoder.name=random_cnn", "encoder.kwargs={widths: [8, 16]}", "eval.num_samples=40"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return load_config("experiments/configs/digits.yaml", "smoke", sets)


@pytest.mark.parametrize("stream", [False, True])
def test_training_on_prepared_latents(tmp_path, stream):
    _synthetic(tmp_path / "data", 600, shard_size=60)
    out = tmp_path / "run"
    summary = training_loop(_config(tmp_path / "data", stream, 6), out, progress=False)
    assert summary["steps"] == 6 and np.isfinite(summary["latent_mean_abs_diff"])
    assert summary["feature_bank"]["enabled"] is False
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ("data_stream" in state) is stream
    if stream:
        ds = load_prepared(tmp_path / "data", limit=600)
        assert state["data_stream"]["pushed"] > 6 * 10 and state["data_stream"]["files"] == 10 and len(ds) == 600


def test_streamed_training_resumes_mid_stream(tmp_path):
    _synthetic(tmp_path / "data", 600, shard_size=60)
    training_loop(_config(tmp_path / "data", True, 9), tmp_path / "whole", progress=False, evaluate=False)
    training_loop(_config(tmp_path / "data", True, 3), tmp_path / "parts", progress=False, evaluate=False)
    training_loop(_config(tmp_path / "data", True, 6), tmp_path / "parts", progress=False, evaluate=False)
    mid = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=False)["data_stream"]
    assert mid["pushed"] > 0 and (mid["shard_pos"], mid["row_pos"]) != (0, 0)
    training_loop(_config(tmp_path / "data", True, 9), tmp_path / "parts", progress=False, evaluate=False)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=False)
    assert a["data_stream"] == b["data_stream"]
