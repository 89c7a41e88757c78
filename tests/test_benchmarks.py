"""The benchmark yardstick is the same formula: the straightforward reference of
benchmarks/reference_drift.py agrees with the golden numbers, and with drift_loss on the
benchmark's own inputs (every kernel path), so a speed ratio compares equal results."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from reference_drift import reference_drift_loss  # noqa: E402
from test_drift import _case_tensor, _golden_cases, _golden_path, _rel_err  # noqa: E402

from drifting_platform.drift import drift_loss  # noqa: E402


@pytest.mark.parametrize("case", _golden_cases() or [None])
def test_reference_matches_golden(case):
    if case is None:
        pytest.skip("golden file missing")
    with np.load(_golden_path()) as data:
        get = lambda name: _case_tensor(data, case, name)  # noqa: E731
        gen = get("gen").clone().requires_grad_(True)
        temps = [float(r) for r in data[f"{case}/R"]]
        loss, info = reference_drift_loss(gen, get("pos"), get("neg"), weight_gen=get("weight_gen"), weight_pos=get("weight_pos"),
                                          weight_neg=get("weight_neg"), temperatures=temps)
        (grad,) = torch.autograd.grad(loss.sum(), gen)
        assert _rel_err(loss.detach(), get("loss")) <= 1e-4
        assert _rel_err(grad, get("grad")) <= 1e-2


@pytest.mark.parametrize("chunk", [1 << 30, 1 << 12, 1])
@pytest.mark.parametrize("scales", [(1.0, 1.0), (1.5, 1.0), (1.0, 0.0)])
def test_kernel_paths_agree_with_reference_on_benchmark_inputs(chunk, scales):
    import bench_drift as b

    gen, pos, neg, wneg = b._inputs((2, 48, 8, 40, 64))
    g1 = gen.clone().requires_grad_(True)
    l1, i1 = drift_loss(g1, pos, neg, weight_neg=wneg, chunk_elems=chunk, attraction_scale=scales[0], repulsion_scale=scales[1])
    l1.sum().backward()
    if scales == (1.0, 1.0):
        g2 = gen.clone().requires_grad_(True)
        l2, i2 = reference_drift_loss(g2, pos, neg, weight_neg=wneg)
        l2.sum().backward()
    else:  # the reference has no scales: compare against the stacked path
        g2 = gen.clone().requires_grad_(True)
        l2, i2 = drift_loss(g2, pos, neg, weight_neg=wneg, chunk_elems=1 << 30, attraction_scale=scales[0], repulsion_scale=scales[1])
        l2.sum().backward()
    assert _rel_err(l1.detach(), l2.detach()) <= 1e-5
    assert _rel_err(g1.grad, g2.grad) <= 1e-4
    for k in i2:
        if k.startswith("loss_R"):
            assert _rel_err(i1[k], i2[k]) <= 1e-4, k


def test_gpu_check_runs_its_every_part_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py --tiny: the kernel rows (ours, at both chunk sizes, equal to
    the float32 reference), the training step with its FLOP count, the step's four parts
    profiled, evaluation throughput, and the written table: the script the GPU machine runs
    works before device time is spent on it."""
    import json

    import gpu_check

    assert gpu_check.main(["--tiny", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results_gpu.json").read_text())["rows"]
    kernel = [r for r in rows if r["check"] == "drift_kernel"]
    impls = ("reference", "ours", "ours chunk=2^25")
    assert {(r["impl"], r["dtype"]) for r in kernel} == {(i, d) for i in impls for d in ("float32", "bfloat16")}
    for r in kernel:
        if r["impl"].startswith("ours") and r["dtype"] == "float32":
            assert float(r["rel_diff_loss"]) <= 1e-5 and float(r["rel_diff_grad"]) <= 1e-4, r
    step = next(r for r in rows if r["check"] == "train_step_bf16")
    assert step["tflops_per_step"] > 0 and step["generated_samples_per_s"] > 0
    prof = next(r for r in rows if r["check"] == "step_profile_bf16")
    assert len(prof["ms"]) == 4 and all(v > 0 for v in prof["ms"].values()), prof
    assert abs(sum(prof["share"].values()) - 1) < 0.01 and prof["feature_sets"] > 1
    ev = next(r for r in rows if r["check"] == "evaluation_bf16")
    assert ev["generated_samples_per_s"] > 0 and ev["mae_feature_images_per_s"] > 0
    md = (tmp_path / "results_gpu.md").read_text()
    assert md.startswith("# GPU check") and md.count("| drift_kernel |") == len(kernel)


def test_step_profile_benchmark_row():
    """bench_step (the CPU, scaled-down step profile run.py reports): one row in ms that
    names the step's four parts in its note."""
    import bench_step

    (row,) = bench_step.run(quick=True)
    assert row["unit"] == "ms" and row["ours"] > 0
    for part in ("encoder on data samples", "generator fwd+bwd", "encoder fwd+bwd on generated", "drift loss fwd+bwd"):
        assert part in row["note"], part
