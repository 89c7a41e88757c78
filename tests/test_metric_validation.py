"""The metric validation suite: the headline FID rises with every controlled degradation of
real digits, from a real-vs-real floor (eval/validation.py, eval/degradations.py)."""

import numpy as np
import pytest
import torch

from drifting_platform.eval import degradations as D
from drifting_platform.eval.validation import Scorer, split_halves, validation_curves


@pytest.fixture(scope="module")
def curves():
    return validation_curves()


@pytest.mark.parametrize("name", list(D.DEGRADATIONS))
def test_headline_fid_rises_monotonically_with_each_degradation(curves, name):
    fid = curves["curves"][name]["fid"]
    assert fid[0] == curves["floor"]["fid"]
    assert all(b > a for a, b in zip(fid, fid[1:])), f"{name}: {fid}"


def test_real_vs_real_stays_at_its_floor(curves):
    """Other half splits of the real digits score like the floor, below every degradation."""
    floor = curves["floor"]["fid"]
    weakest = min(c["fid"][1] for c in curves["curves"].values())
    others = []
    for seed in (1, 2):
        ref, cand, _ = split_halves(seed)
        others.append(Scorer(ref)(cand)["fid"])
    assert all(abs(o - floor) < 0.35 * floor for o in others), (floor, others)
    assert max([floor, *others]) < weakest


def test_diversity_failures_lower_recall_and_fidelity_failures_lower_precision(curves):
    c = curves["curves"]
    assert c["shrink"]["recall"][-1] < 0.5 * c["shrink"]["recall"][0]
    assert c["drop_classes"]["coverage"][-1] < c["drop_classes"]["coverage"][0] - 0.2
    assert c["pixel_noise"]["precision"][-1] < 0.5 * c["pixel_noise"]["precision"][0]
    assert c["blur"]["precision"][-1] < 0.5 * c["blur"]["precision"][0]
    assert curves["identity"].startswith("digits-div-v1-")


def test_degradations_keep_shape_and_strength_zero_is_identity():
    ref, cand, y = split_halves(0)
    for name, (fn, strengths, _) in D.DEGRADATIONS.items():
        assert np.array_equal(D.degrade(name, cand, y, 0), cand), name
        out = D.degrade(name, cand, y, strengths[-1])
        assert out.shape == cand.shape and out.dtype == np.float32 and not np.array_equal(out, cand)
        assert np.array_equal(out, D.degrade(name, cand, y, strengths[-1])), f"{name} is not reproducible"
    s = D.shrink(cand, y, 1.0)
    for c in np.unique(y):
        assert np.allclose(s[y == c], cand[y == c].mean(0), atol=1e-6)
    dropped = D.drop_classes(cand, y, 3, seed=0)
    classes = np.random.RandomState(0).permutation(np.unique(y))[:3]
    assert not any((dropped[np.isin(y, classes)][:, None] == cand[None, np.isin(y, classes)]).all(axis=(2, 3, 4)).any(1))


def test_image_metrics_headline_equals_the_suite_features():
    """image_metrics' digits-div FID is the suite's FID (same features after uint8)."""
    from drifting_platform.eval.fidelity import image_metrics

    ref, cand, _ = split_halves(0)
    m = image_metrics(cand, ref, cache_reference=False, metrics=("fid", "prc", "dc"))
    s = Scorer(ref)(cand)
    for k in ("fid", "precision", "recall", "density", "coverage"):
        assert m[k] == pytest.approx(s[k], rel=1e-4, abs=1e-6), k
    torch.testing.assert_close(torch.tensor(m["fid"]), torch.tensor(s["fid"]), rtol=1e-4, atol=0)
