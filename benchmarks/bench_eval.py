"""Evaluation cost (issue 6 item 4): generation and feature-extraction throughput, and the
end-of-run evaluation with the reference statistics cached vs computed.

What is measured (CPU, a fixed number of torch threads, reported):
- generation: samples/s of the digits generator (`conv-s` at 8x8, the digits config's) in
  `sampling.generate`, the path `evaluate_run` and `drifting-platform sample` use, batches
  of 500, one network evaluation per sample; 2000 samples, median of repeats;
- feature extraction: samples/s of the FID / KID feature extractor used here (the
  platform's digits classifier as torch-fidelity's "drifting-digits" extractor, uint8
  [N, 3, H, W] in, 128-d features out), batches of 256 as `image_metrics` feeds it;
- FID / KID (`image_metrics`, 2000 generated vs the 1797 data images) and the whole
  end-of-run evaluation (`evaluate_run`: generation, FID / KID, label accuracy, diversity,
  samples.npz and samples.png) with a cold reference cache (the data set's features and FID
  statistics computed: what every run paid before the cache) vs a warm one (read from
  `$DRIFTING_CACHE_DIR/fidelity`). Cold and warm alternate, medians are compared; the
  classifier weights are already cached in both (their one-off training is not evaluation).

    python benchmarks/bench_eval.py [--quick]
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "digits.yaml"
THREADS = 2


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def run(quick: bool = False) -> list[dict]:
    from drifting_platform.config import load_config
    from drifting_platform.eval import classifier as clf
    from drifting_platform.eval import fidelity
    from drifting_platform.sampling import balanced_labels, generate
    from drifting_platform.train.evaluate import evaluate_run
    from drifting_platform.train.loop import build_data, build_model

    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    reps = 2 if quick else 5
    cache_reps = 1 if quick else 3
    rows = []
    old_env = os.environ.get(clf.CACHE_ENV)
    try:
        cfg = load_config(CONFIG, "local", ["eval.num_samples=2000", "eval.batch_size=500"])
        dataset = build_data(cfg)
        generator = build_model(cfg, dataset).eval()
        n = cfg.eval.num_samples
        labels = balanced_labels(n, dataset.num_classes)

        # generation
        gen_s = _median_time(lambda: generate(generator, labels, seed=1, batch_size=cfg.eval.batch_size), reps)
        rows.append({
            "benchmark": "evaluation: generation", "case": f"digits {cfg.model.name} 8x8, {n} samples, batch {cfg.eval.batch_size}",
            "baseline": None, "ours": n / gen_s, "unit": "samples/s", "ratio": None, "target": None,
            "note": f"{gen_s * 1e3:.0f} ms for {n} samples (1 NFE each); {THREADS} threads",
        })

        # feature extraction (the classifier from the default cache: trained once if missing)
        clf.get_digits_classifier()
        extractor = fidelity.DigitsFeatureExtractor(fidelity.DIGITS_EXTRACTOR, [fidelity.FEATURE_FEATURES])
        images = fidelity.unit_to_uint8(torch.from_numpy(dataset.to_output(generate(generator, labels, seed=2))))

        def extract():
            with torch.no_grad():
                for i in range(0, len(images), 256):
                    extractor(images[i : i + 256])

        ext_s = _median_time(extract, reps)
        rows.append({
            "benchmark": "evaluation: feature extraction", "case": f"digits classifier (FID / KID features), {n} images 8x8 -> 32x32, batch 256",
            "baseline": None, "ours": n / ext_s, "unit": "samples/s", "ratio": None, "target": None,
            "note": f"{ext_s * 1e3:.0f} ms for {n} images; {THREADS} threads",
        })

        # cold vs warm reference statistics, in a private cache folder holding the classifier
        with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
            tmp = Path(tmp)
            shutil.copy2(clf.classifier_cache_path(), clf.classifier_cache_path(tmp))
            os.environ[clf.CACHE_ENV] = str(tmp)
            ref_root = Path(fidelity.reference_cache_root())
            samples = torch.from_numpy(dataset.to_output(generate(generator, labels, seed=3)))
            reference = torch.from_numpy(dataset.to_output(dataset.x))

            def metrics():
                return fidelity.image_metrics(samples, reference, reference_name=dataset.name)

            def full_eval():
                return evaluate_run(cfg, dataset, generator, tmp / "run")

            from torch_fidelity.metric_kid import kid_features_to_metric

            kid_s = None
            for label, fn, what in (
                ("FID / KID (image_metrics)", metrics, f"{n} generated vs {len(reference)} data images"),
                ("end-of-run evaluation (evaluate_run)", full_eval, f"{n} samples: generation, FID / KID, label accuracy, diversity, files"),
            ):
                fn()  # warm-up (imports, the SVC of the label check)
                cold, warm, results = [], [], []
                for _ in range(cache_reps):
                    shutil.rmtree(ref_root, ignore_errors=True)
                    t = time.perf_counter()
                    results.append(fn())
                    cold.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    results.append(fn())
                    warm.append(time.perf_counter() - t)
                same = all(r["fid"] == results[0]["fid"] and r["kid"] == results[0]["kid"] for r in results)
                c, w = statistics.median(cold), statistics.median(warm)
                if kid_s is None:  # what the cache cannot remove: KID's subsets (computed once)
                    with torch.no_grad():
                        fa = extractor(fidelity.unit_to_uint8(samples))[0]
                        fb = extractor(fidelity.unit_to_uint8(reference))[0]
                    t = time.perf_counter()
                    kid_features_to_metric(fa, fb, kid_subsets=100, kid_subset_size=1000, kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=0, verbose=False)
                    kid_s = time.perf_counter() - t
                rows.append({
                    "benchmark": "evaluation: cached reference statistics", "case": f"digits 8x8 {label}, {what}",
                    "baseline": c, "ours": w, "unit": "s", "ratio": c / w, "target": None,
                    "note": f"cold (reference features + FID statistics computed) {c * 1e3:.0f} ms vs warm (read from cache) {w * 1e3:.0f} ms, "
                            f"saves {(c - w) * 1e3:.0f} ms per evaluation; fid / kid identical cold and warm: {same}; "
                            f"most of the rest is KID's 100 subsets x 1000 in float64 ({kid_s * 1e3:.0f} ms), which no cache removes; {THREADS} threads",
                })
    finally:
        if old_env is None:
            os.environ.pop(clf.CACHE_ENV, None)
        else:
            os.environ[clf.CACHE_ENV] = old_env
        torch.set_num_threads(threads_before)
    return rows


if __name__ == "__main__":
    from _common import main

    main(run)
