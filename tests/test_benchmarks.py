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
