"""eval/: FID / KID / MMD against reference implementations, toy mode counts, the digits
classifier (determinism, cache), the torch-fidelity extractor, the independent checks."""

import importlib
import os

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from drifting_platform.eval import classifier as clf
from drifting_platform.eval import metrics as M

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A private cache folder for this session: the classifier is trained exactly once here."""
    d = tmp_path_factory.mktemp("eval-cache")
    old = os.environ.get(clf.CACHE_ENV)
    os.environ[clf.CACHE_ENV] = str(d)
    yield d
    if old is None:
        os.environ.pop(clf.CACHE_ENV, None)
    else:
        os.environ[clf.CACHE_ENV] = old


@pytest.fixture(scope="session")
def digits_model(cache_dir):
    return clf.get_digits_classifier()


@pytest.fixture(scope="session")
def digits_all():
    return clf.digits_arrays("all")


def _random_features(n, d, seed, shift=0.0):
    rng = np.random.RandomState(seed)
    a = rng.randn(d, d) / np.sqrt(d)
    return rng.randn(n, d) @ a + rng.rand(d) + shift


def _eight_gaussians(n, seed=0, std=0.05, modes=range(8)):
    rng = np.random.RandomState(seed)
    angles = np.arange(8) * 2 * np.pi / 8
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    k = rng.choice(list(modes), n)
    return centers[k] + std * rng.randn(n, 2), centers


# ----------------------------------------------------------------------------- FID / KID / MMD


def test_fid_matches_scipy_and_torch_fidelity():
    from torch_fidelity.metric_fid import fid_statistics_to_metric, KEY_METRIC_FID

    a, b = _random_features(600, 24, 0), _random_features(500, 24, 1, shift=0.3)
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    ours = M.fid_from_features(a, b)
    assert ours == pytest.approx(ref, rel=1e-3)
    tf = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)[KEY_METRIC_FID]
    assert ours == pytest.approx(tf, rel=1e-6)
    # torch tensors and float32 are accepted; statistics chain gives the same number
    assert M.fid_from_features(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(ours, rel=1e-4)
    assert M.statistics_to_fid(*M.features_to_statistics(a), *M.features_to_statistics(b)) == ours


def test_fid_is_zero_on_itself_and_grows_with_a_mean_shift():
    a = _random_features(400, 16, 2)
    assert M.fid_from_features(a, a) < 1e-8
    shifts = [0.1, 0.5, 2.0]
    fids = [M.fid_from_features(a, a + s) for s in shifts]
    assert fids == sorted(fids) and fids[0] > 0
    # equal covariances: FID is exactly the squared mean shift
    for s, f in zip(shifts, fids):
        assert f == pytest.approx(16 * s * s, rel=1e-6)


def test_fid_with_singular_covariances_is_finite():
    # fewer samples than dimensions (an 8-sample smoke eval): singular covariances
    a, b = _random_features(8, 32, 3), _random_features(8, 32, 4)
    f = M.fid_from_features(a, b)
    assert np.isfinite(f) and f > 0
    assert M.fid_from_features(a, a) < 1e-6


def test_kid_same_vs_shifted_and_agrees_with_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric, KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD

    a, b = _random_features(600, 16, 5), _random_features(600, 16, 6)
    rng = np.random.RandomState(7)  # two disjoint halves of one sample: the same law
    same = _random_features(1200, 16, 5)[rng.permutation(1200)]
    x, y = same[:600], same[600:]
    k_same, s_same = M.kid_from_features(x, y, subsets=20, subset_size=200)
    k_shift, s_shift = M.kid_from_features(x, x + 0.5, subsets=20, subset_size=200)
    assert abs(k_same) < 3 * max(s_same, 1e-6) + 1e-3
    assert k_shift > 10 * abs(k_same) and k_shift > 3 * s_shift
    # the same estimator and subset sampling as torch-fidelity
    ours = M.kid_from_features(a, b, subsets=10, subset_size=100, seed=3)
    tf = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=10, kid_subset_size=100, rng_seed=3, verbose=False)
    assert ours[0] == pytest.approx(tf[KEY_METRIC_KID_MEAN], rel=1e-9)
    assert ours[1] == pytest.approx(tf[KEY_METRIC_KID_STD], rel=1e-9)
    # subset_size larger than the sets is clipped
    assert np.isfinite(M.kid_from_features(a[:5], b[:7], subsets=3)[0])


def test_mmd_rbf_unbiased_matches_brute_force_and_separates():
    rng = np.random.RandomState(0)
    x, y = rng.randn(50, 2), rng.randn(40, 2) + 0.3
    bw = (0.5, 1.0)

    def k(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * h * h)) for h in bw)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    unbiased = (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    biased = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    assert M.mmd_rbf(x, y, bandwidths=bw) == pytest.approx(unbiased, rel=1e-9)
    assert M.mmd_rbf(x, y, bandwidths=bw, unbiased=False) == pytest.approx(biased, rel=1e-9)
    # same law ~0, a shifted law clearly larger; default (median) bandwidths; torch input
    p, q = _eight_gaussians(1000, seed=1)[0], _eight_gaussians(1000, seed=2)[0]
    same = M.mmd_rbf(torch.from_numpy(p).float(), torch.from_numpy(q).float())
    shifted = M.mmd_rbf(p + 0.3, q)
    collapsed = M.mmd_rbf(_eight_gaussians(1000, seed=3, modes=[0, 1, 2])[0], q)
    assert abs(same) < 0.01 and shifted > 20 * abs(same) and collapsed > 20 * abs(same)


def test_modes_covered_and_high_quality_fraction_on_eight_gaussians():
    perfect, centers = _eight_gaussians(2000, seed=0)
    assert M.modes_covered(perfect, centers) == 8
    assert M.modes_covered(torch.from_numpy(perfect), torch.from_numpy(centers)) == 8
    three, _ = _eight_gaussians(2000, seed=1, modes=[0, 3, 5])
    assert M.modes_covered(three, centers) == 3
    # a handful of stray samples on another mode does not cover it
    stray = np.concatenate([three, centers[[6]] + 0.01 * np.random.RandomState(2).randn(5, 2)])
    assert M.modes_covered(stray, centers) == 3
    assert M.modes_covered(stray, centers, min_count=1) == 4
    assert M.high_quality_fraction(perfect, centers) > 0.97
    noise = np.random.RandomState(3).uniform(-3, 3, (2000, 2))
    assert M.high_quality_fraction(noise, centers) < 0.05
    assert M.modes_covered(noise, centers) <= 8  # counts, never more than K
    # too wide samples (std 0.5) leave the default radius (~3 std of 0.05)
    wide, _ = _eight_gaussians(2000, seed=4, std=0.5)
    assert M.high_quality_fraction(wide, centers) < 0.2
    assert M.default_mode_radius(centers) == pytest.approx(0.1 * 4 * np.sin(np.pi / 8))


# ----------------------------------------------------------------------------- digits classifier


def test_classifier_accuracy_sizes_and_features(digits_model):
    xte, yte = clf.digits_arrays("test")
    x, y = torch.from_numpy(xte), torch.from_numpy(yte)
    assert clf.accuracy(digits_model, x, y) > 0.97
    assert digits_model.test_accuracy > 0.97
    for size in (16, 32):  # the classifier resizes its input itself
        xs = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        assert clf.accuracy(digits_model, xs, y) > 0.95
    f = digits_model.features(x[:5])
    assert f.shape == (5, clf.FEATURE_DIM) and digits_model(x[:5]).shape == (5, 10)
    assert not digits_model.training and not any(p.requires_grad for p in digits_model.parameters())
    # held-out split is disjoint from the training split
    xtr, _ = clf.digits_arrays("train")
    assert len(xtr) + len(xte) == 1797


def test_classifier_cache_reuse_and_determinism(digits_model, cache_dir, monkeypatch):
    path = clf.classifier_cache_path()
    assert path.parent == cache_dir and path.is_file() and clf.recipe_hash() in path.name
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) >= {clf.KEY_STATE, clf.KEY_RECIPE, clf.KEY_TEST_ACCURACY}

    # a fresh process-level load reads the file and never retrains
    def no_training(*a, **k):
        raise AssertionError("retrained although the cache holds the weights")

    monkeypatch.setattr(clf, "train_digits_classifier", no_training)
    clf.clear_memory_cache()
    again = clf.get_digits_classifier()
    for k, v in digits_model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    monkeypatch.undo()

    # a second training from scratch gives bit-identical weights, and global state is untouched
    threads, rng, det = torch.get_num_threads(), torch.get_rng_state(), torch.are_deterministic_algorithms_enabled()
    model, info = clf.train_digits_classifier()
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)
    assert torch.are_deterministic_algorithms_enabled() == det
    assert info[clf.KEY_TEST_ACCURACY] == ckpt[clf.KEY_TEST_ACCURACY]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt[clf.KEY_STATE][k]), k

    # a different recipe is a different file
    assert clf.classifier_cache_path(recipe=dict(clf.RECIPE, epochs=1)) != path


def test_atomic_save_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sub" / "w.pt"
    clf.atomic_torch_save({"a": torch.ones(2)}, target)
    with pytest.raises(Exception):
        clf.atomic_torch_save({"a": lambda: 0}, target)  # lambdas do not pickle: fails mid-write
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))  # old file intact
    assert [p.name for p in target.parent.iterdir()] == ["w.pt"]


# ----------------------------------------------------------------------------- torch-fidelity


def test_extractor_registration_is_idempotent():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from drifting_platform.eval import fidelity

    fidelity.register_digits_extractor()
    reloaded = importlib.reload(fidelity)
    assert FEATURE_EXTRACTORS_REGISTRY[reloaded.DIGITS_EXTRACTOR] is reloaded.DigitsFeatureExtractor


def test_image_metrics_through_torch_fidelity(digits_model, digits_all):
    from drifting_platform.eval.fidelity import image_metrics, unit_to_uint8

    x, _ = digits_all
    p = np.random.RandomState(0).permutation(len(x))
    a, b = x[p[:800]], x[p[800:1600]]
    real = image_metrics(a, b, kid_subsets=20, kid_subset_size=400, extractor="digits")
    noise = image_metrics(np.random.RandomState(1).rand(800, 1, 8, 8).astype(np.float32), b, kid_subsets=20, kid_subset_size=400, extractor="digits")
    assert set(real) == {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage"}
    assert real["fid"] < 0.05 * noise["fid"] and noise["fid"] > 50
    assert abs(real["kid"]) < 0.05 * noise["kid"]

    # torch-fidelity's numbers are our metrics on our classifier's features of the uint8 images
    with torch.no_grad():
        fa = digits_model.features(unit_to_uint8(a)[:, :1].float() / 255).double()
        fb = digits_model.features(unit_to_uint8(b)[:, :1].float() / 255).double()
    assert real["fid"] == pytest.approx(M.fid_from_features(fa, fb), rel=1e-3)
    kid, kid_std = M.kid_from_features(fa, fb, subsets=20, subset_size=400, seed=0)
    assert real["kid"] == pytest.approx(kid, rel=1e-3, abs=1e-3)

    # 3-channel and larger inputs work (grayscale images as RGB give the same numbers)
    rgb = image_metrics(np.repeat(a[:200], 3, 1), b[:200], kid_subsets=5, kid_subset_size=100, extractor="digits")
    gray = image_metrics(a[:200], b[:200], kid_subsets=5, kid_subset_size=100, extractor="digits")
    assert rgb["fid"] == pytest.approx(gray["fid"], rel=1e-6)
    up = F.interpolate(torch.from_numpy(a[:200]), size=(32, 32), mode="bilinear", align_corners=False)
    assert np.isfinite(image_metrics(up, b[:200], kid_subsets=5, kid_subset_size=100, extractor="digits")["fid"])
    # a tiny eval (8 samples) still gives numbers
    assert np.isfinite(image_metrics(a[:8], b[:8], extractor="digits")["kid"])
    assert all(np.isnan(v) for v in image_metrics(a[:1], b[:8], extractor="digits").values())


def test_reference_statistics_are_cached(digits_model, digits_all, cache_dir, monkeypatch):
    """A second evaluation against the same reference reads its features / FID statistics
    from the cache: the extractor sees only the generated samples, and the numbers agree."""
    from drifting_platform.eval import fidelity

    x, _ = digits_all
    samples, ref = x[:300], x[301:901]  # a reference no other test uses: a cold cache
    seen: list[int] = []
    original = fidelity.DigitsFeatureExtractor.forward

    def counting_forward(self, images):  # a wrapper: the real features are computed
        seen.append(len(images))
        return original(self, images)

    monkeypatch.setattr(fidelity.DigitsFeatureExtractor, "forward", counting_forward)
    kw = dict(kid_subsets=10, kid_subset_size=200, batch_size=100, reference_name="digits", extractor="digits")
    root = cache_dir / "fidelity"
    cold = fidelity.image_metrics(samples, ref, **kw)
    assert sum(seen) == 300 + 600  # samples and reference
    name = fidelity.reference_cache_name(fidelity.unit_to_uint8(ref), "digits", name="digits")
    assert name.startswith("ref-digits-n600-") and fidelity.reference_cache_root() == str(root)
    files = [p.name for p in root.iterdir() if p.name.startswith(name)]
    assert any("stat-fid" in f for f in files) and any("features" in f for f in files)
    seen.clear()
    warm = fidelity.image_metrics(samples, ref, **kw)
    assert sum(seen) == 300  # the reference was not encoded again
    assert warm == cold
    seen.clear()
    other = fidelity.image_metrics(samples, ref[:500], **kw)  # another sample count: its own entry
    assert sum(seen) == 300 + 500 and other["fid"] != cold["fid"]
    assert fidelity.reference_cache_name(fidelity.unit_to_uint8(ref[:500]), "digits") != fidelity.reference_cache_name(fidelity.unit_to_uint8(ref), "digits")
    seen.clear()
    n_files = len(list(root.iterdir()))
    off = fidelity.image_metrics(samples, ref, **{**kw, "cache_reference": False})
    assert sum(seen) == 900 and off == pytest.approx(cold, rel=1e-6)
    assert len(list(root.iterdir())) == n_files  # nothing written without the cache


def test_inception_without_weights_raises_and_never_downloads(monkeypatch, tmp_path):
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    from drifting_platform.eval.fidelity import InceptionWeightsMissing, image_metrics

    def no_network(*a, **k):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(inc, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    x = np.random.RandomState(0).rand(4, 1, 8, 8).astype(np.float32)
    with pytest.raises(InceptionWeightsMissing, match="inception_weights"):
        image_metrics(x, x, extractor="inception")
    with pytest.raises(InceptionWeightsMissing, match="not found"):
        image_metrics(x, x, extractor="inception", inception_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="extractor"):
        image_metrics(x, x, extractor="vgg")


# ----------------------------------------------------------------------------- independent checks


def test_independent_label_accuracy():
    from drifting_platform.eval.independent import label_accuracy

    xte, yte = clf.digits_arrays("test")  # the SVC is fitted on the train split only
    assert label_accuracy(xte, yte) > 0.95
    up = F.interpolate(torch.from_numpy(xte), size=(32, 32), mode="bilinear", align_corners=False)
    assert label_accuracy(up, torch.from_numpy(yte)) > 0.95  # area-averaged back to 8x8
    rng = np.random.RandomState(0)
    noise_acc = label_accuracy(rng.rand(1000, 1, 16, 16), rng.randint(0, 10, 1000))
    assert noise_acc < 0.2  # chance is 0.1
    with pytest.raises(ValueError):
        label_accuracy(xte[:3], yte[:4])


def test_diversity_detects_collapse():
    from drifting_platform.eval.independent import data_diversity, diversity_ratio, per_class_diversity

    x, y = clf.digits_arrays("all")
    real = data_diversity()
    assert sorted(real) == list(range(10)) and all(v > 0.5 for v in real.values())
    assert per_class_diversity(x, y) == pytest.approx(real)
    # collapse: every sample of a class is one image
    first = {c: x[np.argmax(y == c)] for c in range(10)}
    labels = np.repeat(np.arange(10), 20)
    collapsed = np.stack([first[c] for c in labels])
    div = per_class_diversity(collapsed, labels)
    assert max(div.values()) < 1e-6
    assert diversity_ratio(collapsed, labels) < 1e-6
    xte, yte = clf.digits_arrays("test")
    assert 0.8 < diversity_ratio(xte, yte) < 1.2


# ----------------------------------------------------------------------------- k-NN manifolds


def test_precision_recall_match_torch_fidelity_and_see_collapse():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    from drifting_platform.eval.metrics import precision_recall

    rng = np.random.RandomState(0)
    real = rng.randn(300, 8)
    gen = rng.randn(250, 8) * 0.9 + 0.2
    p, r = precision_recall(gen, real, k=3)
    tp, tr = calculate_precision_recall_full(torch.from_numpy(gen).float(), torch.from_numpy(real).float(), 3)
    assert p == pytest.approx(tp, abs=1e-6) and r == pytest.approx(tr, abs=1e-6)
    collapsed = real[:5][rng.randint(0, 5, 250)] + 0.01 * rng.randn(250, 8)  # 5 real points, repeated
    pc, rc = precision_recall(collapsed, real, k=3)
    assert pc > 0.9 and rc < 0.1  # faithful but not diverse


def test_density_coverage_match_a_direct_computation():
    from drifting_platform.eval.metrics import density_coverage

    rng = np.random.RandomState(1)
    real, gen, k = rng.randn(120, 5), rng.randn(90, 5) + 0.3, 5
    d_rr = np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1))
    radius = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
    d_gr = np.sqrt(((gen[:, None] - real[None]) ** 2).sum(-1))
    density = (d_gr <= radius[None]).sum() / (k * len(gen))
    coverage = (d_gr.min(axis=0) <= radius).mean()
    d, c = density_coverage(gen, real, k=k)
    assert d == pytest.approx(density, rel=1e-12) and c == pytest.approx(coverage, rel=1e-12)
    same_d, same_c = density_coverage(real[:60], real[60:], k=k)
    assert 0.5 < same_d < 1.6 and same_c > 0.5
    far_d, far_c = density_coverage(gen + 50.0, real, k=k)
    assert far_d == 0.0 and far_c == 0.0
