"""Ray Train / Ray Tune launchers: data-parallel equivalence, a smoke sweep, sweep-file errors.

Real Ray (a local 2-CPU instance started here, never an existing cluster) and real Tune.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import REPO

from drifting_platform.config import ConfigError, load_config
from drifting_platform.launch.spec import Metric, SweepError, load_sweep

pytestmark = pytest.mark.usefixtures("isolated_home")  # a fresh DRIFTING_HOME and SQLite store per test

DIGITS = REPO / "experiments" / "configs" / "digits.yaml"


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_down():
    """Ray is not running (the validation tests check that nothing started it)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    yield ray


class FakeTracker:
    """Records the SweepTracker calls (docs/internals.md) made by the driver; implements
    the whole `SweepTracking` protocol (test_fake_and_real_tracker_follow_the_protocol)."""

    def __init__(self):
        self.calls = []
        self.n = 0

    def _id(self):
        self.n += 1
        return f"run{self.n}"

    def start_sweep(self, name, params, tags, resume_run_id=None):
        self.calls.append(("start_sweep", name, params, tags))
        return resume_run_id or self._id()

    def start_trial(self, parent_id, trial_name, params, tags):
        rid = self._id()
        self.calls.append(("start_trial", parent_id, trial_name, params, tags, rid))
        return rid

    def log_metrics(self, run_id, metrics, step):
        self.calls.append(("log_metrics", run_id, dict(metrics), step))

    def log_artifacts(self, run_id, paths):
        self.calls.append(("log_artifacts", run_id, list(paths)))

    def end_run(self, run_id, status, error=None):
        self.calls.append(("end_run", run_id, status, error))

    def find_sweep_run(self, experiment, sweep_name):
        self.calls.append(("find_sweep_run", experiment, sweep_name))
        return None  # no earlier sweep: --resume starts a new parent run

    def child_runs(self, parent_id):
        return []

    def reopen_run(self, run_id):
        self.calls.append(("reopen_run", run_id))

    def last_steps(self, run_id):
        return {}


def _protocol_methods(proto) -> list[str]:
    return [n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")]


def _accepts(impl, proto_fn) -> list[str]:
    """Why `impl` cannot be called the way the protocol method `proto_fn` is ([] if it can)."""
    want = [p for p in inspect.signature(proto_fn).parameters.values() if p.name != "self"]
    have = {p.name: p for p in inspect.signature(impl).parameters.values() if p.name != "self"}
    positional = [p for p in have.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    problems = []
    for i, p in enumerate(want):
        q = have.get(p.name)
        if q is None:
            problems.append(f"no parameter {p.name!r}")
        elif p.kind == p.POSITIONAL_OR_KEYWORD and (i >= len(positional) or positional[i].name != p.name):
            problems.append(f"{p.name!r} is not positional parameter {i}")
        elif p.default is not p.empty and q.default is q.empty:
            problems.append(f"{p.name!r} has no default")
    extra = [q.name for q in have.values() if q.name not in {p.name for p in want} and q.default is q.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)]
    problems += [f"extra required parameter {n!r}" for n in extra]
    return problems


def test_fake_and_real_tracker_follow_the_protocol():
    """`SweepTracking` names every tracker call of a sweep; the fake and the MLflow tracker
    both take each the way the sweep makes it."""
    pytest.importorskip("ray")
    from drifting_platform.launch.callback import SweepTracking
    from drifting_platform.tracking import SweepTracker

    methods = _protocol_methods(SweepTracking)
    assert {"start_sweep", "start_trial", "log_metrics", "log_artifacts", "end_run", "find_sweep_run", "child_runs", "reopen_run", "last_steps"} <= set(methods)
    for cls in (FakeTracker, SweepTracker):
        for name in methods:
            assert callable(getattr(cls, name, None)), f"{cls.__name__} lacks {name}"
            assert not _accepts(getattr(cls, name), getattr(SweepTracking, name)), f"{cls.__name__}.{name}: {_accepts(getattr(cls, name), getattr(SweepTracking, name))}"


# --------------------------------------------------------------------------- validation


def _write(tmp_path, body: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(f"base: {DIGITS}\npreset: smoke\n" + textwrap.dedent(body))
    return p


def test_files_and_devices_are_checked_where_the_sweep_runs(tmp_path, monkeypatch):
    """Registry names fail in load_sweep anywhere; this machine's files and devices fail in
    check_machine (run_sweep's first step) unless a Ray cluster runs the trials."""
    from drifting_platform.launch.spec import check_machine

    for var in ("RAY_ADDRESS", "RAY_JOB_ID", "RAY_JOB_SUBMISSION_ID"):
        monkeypatch.delenv(var, raising=False)
    missing = tmp_path / "no-shards"
    path = _write(tmp_path, f"""
        name: machine
        rows:
          - {{name: ok, set: {{}}}}
          - {{name: far, set: {{data.name: shards, data.path: {missing}, data.size: null}}}}
        """)
    spec = load_sweep(path)  # a cluster preset whose data lives on the nodes loads here
    with pytest.raises(SweepError, match=r"rows\[1\]\.set: trial 'far': data\.path: .*no-shards"):
        check_machine(spec)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    check_machine(spec)  # the cluster's nodes have the files


BAD = {
    "unknown_top": ("rows: [{name: a, set: {}}]\nbogus: 1\n", "bogus"),
    "bad_space_kind": ("space:\n  train.lr: {normal: [0, 1]}\n", "space.train.lr.normal"),
    "bad_space_range": ("search: optuna\nspace:\n  train.lr: {loguniform: [0.0, 1.0]}\n", "space.train.lr.loguniform"),
    "unknown_param": ("rows: [{name: a, set: {drift.temprature: [0.1]}}]\n", "rows[0].set.drift.temprature"),
    "negative_temperature": (
        "rows:\n  - {name: ok, set: {drift.temperatures: [0.05]}}\n  - {name: neg, set: {drift.temperatures: [-0.05]}}\n",
        "drift.temperatures[0]",
    ),
    "grid_with_range": ("space:\n  train.lr: {uniform: [0.001, 0.01]}\n", "space.train.lr.uniform"),
    "optuna_with_grid": ("search: optuna\nspace:\n  train.lr: {grid: [0.001]}\n", "space.train.lr.grid"),
    "optuna_with_rows": ("search: optuna\nrows: [{name: a, set: {}}]\n", "rows"),
    "bad_resources": ("rows: [{name: a, set: {}}]\nresources: {cpus: 2}\n", "resources.cpus"),
    "bad_row_key": ("rows: [{name: a, sets: {}}]\n", "rows[0].sets"),
    "bad_scheduler": ("rows: [{name: a, set: {}}]\nscheduler: {name: hyperband}\n", "scheduler.name"),
    "bad_choice_value": ("search: optuna\nspace:\n  cfg.gamma: {choice: [0.5, 1.5]}\n", "space.cfg.gamma.choice"),
    "workers_split": ("rows: [{name: a, set: {}}]\nresources: {workers: 3}\n", "not divisible by resources.workers"),
    "seeds_zero": ("rows: [{name: a, set: {}}]\nseeds: 0\n", "seeds: expected an integer >= 1"),
    "seeds_bool": ("rows: [{name: a, set: {}}]\nseeds: true\n", "seeds: expected an integer >= 1"),
    "seeds_optuna": ("search: optuna\nseeds: 2\nspace:\n  train.lr: {loguniform: [1.0e-4, 1.0e-3]}\n", "seeds: 2 repeats the trials of grid and rows"),
    "seeds_row_sets_seed": ("seeds: 2\nrows: [{name: a, set: {seed: 3}}]\n", "rows[0].set.seed"),
    "seeds_space_seed": ("seeds: 2\nspace:\n  seed: {grid: [0, 1]}\n", "space.seed varies the seed"),
    "seeds_in_preset": ("rows: [{name: a, set: {}}]\npresets: {smoke: {seeds: -1}}\n", "seeds: expected an integer >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_sweep_file_errors_name_the_key_before_ray(case, tmp_path, ray_down):
    body, key = BAD[case]
    path = _write(tmp_path, body)
    with pytest.raises(SweepError) as exc:
        load_sweep(path)
    assert key in str(exc.value)
    assert isinstance(exc.value, ConfigError)
    assert not ray_down.is_initialized()


def test_run_sweep_rejects_bad_trial_before_ray(tmp_path, ray_down):
    from drifting_platform.launch.sweep import run_sweep

    path = _write(tmp_path, "rows:\n  - {name: neg, set: {drift.temperatures: [0.05, -1.0]}}\n")
    with pytest.raises(SweepError, match=r"rows\[0\].*neg.*drift.temperatures\[1\]"):
        run_sweep(path, out_root=tmp_path / "s", tracker=False)
    assert not ray_down.is_initialized()
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["antisymmetry", "encoder", "temperature", "allocation", "cfg_gamma", "hpo", "normalization", "multiscale"])
@pytest.mark.parametrize("preset", ["smoke", "local"])
def test_shipped_sweep_files_validate(name, preset):
    spec = load_sweep(REPO / "experiments" / f"{name}.yaml", preset=preset)
    # cfg_gamma ranks rows by their FID at their best CFG scale
    assert spec.metric == Metric(name="fid_best_alpha" if name == "cfg_gamma" else "fid", mode="min")
    # the local presets of the paper's tables run three seeds of every row
    table = name not in ("hpo",)
    assert spec.seeds == (3 if preset == "local" and table else 1)
    first = [t for t in spec.trials if t.seed == spec.base_seed]  # one trial per row
    rows = [t.row_label for t in first]
    if spec.trials:
        assert len(spec.trials) == spec.seeds * len(first)
    if name == "antisymmetry":
        assert [r.name for r in spec.rows] == ["V+ - V-", "1.5 V+ - V-", "V+ - 1.5 V-", "2 V+ - V-", "V+ - 2 V-", "V+ only"]
        assert spec.trial_config(spec.trials[-1].params).drift.repulsion_scale == 0.0
    if name == "temperature":
        assert rows == ["0.02", "0.05", "0.2", "all three"]
    if name == "cfg_gamma":
        cfgs = [spec.trial_config(t.params) for t in first]
        assert [(c.cfg.enabled, c.cfg.gamma) for c in cfgs] == [(False, None), (True, 0.25), (True, 0.5), (True, 0.75), (True, None)]
        assert all(c.eval.cfg_scales == (1.0, 1.5, 2.0, 3.0, 4.0) for c in cfgs)
    if name == "allocation":
        from drifting_platform.reports import match_paper_label

        # each row sits beside the paper row it scales (the label before the parentheses)
        assert [match_paper_label(spec.name, r) for r in rows] == ["N_pos=1", "N_pos=16", "N_pos=32", "N_pos=64", "N_c=64,N_pos=64", None]
        cfgs = [spec.trial_config(t.params).sampling for t in first]
        assert [(c.n_classes, c.n_gen, c.n_pos) for c in cfgs] == [(10, 32, 1), (10, 32, 8), (10, 32, 16), (10, 32, 32), (5, 64, 64), (2, 160, 160)]
        assert len({c.n_classes * c.n_gen for c in cfgs}) == 1  # one budget of generated samples
    if name == "hpo":
        assert spec.search == "optuna" and spec.scheduler.name == "asha"
        assert spec.num_samples == (2 if preset == "smoke" else 16)
    if name in ("normalization", "multiscale"):
        from drifting_platform.reports import match_paper_label

        # every row is the paper's row of the same name in `drifting-platform report`
        assert [match_paper_label(spec.name, r) for r in rows] == rows
        assert spec.trial_config(spec.trials[0].params).train.steps == (6 if preset == "smoke" else 700)
    if name == "normalization":
        assert rows == ["softmax x,y", "softmax y", "none"]
        assert [spec.trial_config(t.params).drift.normalization for t in first] == ["xy", "y", "none"]
    if name == "multiscale":
        assert rows == ["a-b", "a-c", "a-d"]
        scales = [spec.trial_config(t.params).drift.feature_scales for t in first]
        assert scales == [("loc", "global"), ("loc", "global", "patch2"), ("loc", "global", "patch2", "patch4")]


def test_cli_preset_and_overrides(tmp_path):
    spec = load_sweep(REPO / "experiments" / "antisymmetry.yaml", preset="smoke", overrides=["train.steps=3"])
    cfg = spec.trial_config(spec.trials[0].params)
    assert cfg.train.steps == 3 and cfg.eval.num_samples == 100 and cfg.sampling.n_classes == 4
    with pytest.raises(SweepError, match="drift.repulsion_scale"):
        load_sweep(REPO / "experiments" / "antisymmetry.yaml", overrides=["drift.repulsion_scale=0.5"])
    with pytest.raises(SweepError, match="presets.nope"):
        load_sweep(REPO / "experiments" / "antisymmetry.yaml", preset="nope")


def test_seeds_repeat_every_row_with_consecutive_seeds(tmp_path):
    """`seeds: N` (file, preset or --seeds) plans every row N times, seed = base seed + k, the
    seed in the label, the directory and the config; one seed plans exactly as before."""
    from drifting_platform.launch.points import describe

    anti = REPO / "experiments" / "antisymmetry.yaml"
    one = load_sweep(anti, preset="smoke")
    assert one.seeds == 1
    assert [t.label for t in one.trials] == ["V+ - V-", "1.5 V+ - V-", "V+ - 1.5 V-", "2 V+ - V-", "V+ - 2 V-", "V+ only"]
    assert [t.dirname for t in one.trials] == ["00_V+_-_V-", "01_1.5_V+_-_V-", "02_V+_-_1.5_V-", "03_2_V+_-_V-", "04_V+_-_2_V-", "05_V+_only"]
    assert all("seed" not in t.params and t.row == t.label and t.seed == 0 for t in one.trials)

    three = load_sweep(anti, preset="smoke", seeds=3, overrides=["seed=7"])
    assert three.seeds == 3 and len(three.trials) == 18
    # seed-major: every row's first seed, then every row's second, ...
    assert [t.seed for t in three.trials] == [7] * 6 + [8] * 6 + [9] * 6
    first = [t for t in three.trials if t.index == 0]
    assert [t.label for t in first] == ["V+ - V- (seed 7)", "V+ - V- (seed 8)", "V+ - V- (seed 9)"]
    assert [t.dirname for t in first] == ["00_V+_-_V-_seed_7", "00_V+_-_V-_seed_8", "00_V+_-_V-_seed_9"]
    assert {t.row for t in first} == {"V+ - V-"}
    assert len({t.dirname for t in three.trials}) == 18
    for t in three.trials:
        assert three.trial_config(t.params).seed == t.seed
        assert describe(three, {"trial": json.loads(json.dumps(t.record()))}) == t
    assert three.trial_config(first[1].params).drift.repulsion_scale == 1.0

    # in the file, in a preset; --seeds wins over both
    path = tmp_path / "seeded.yaml"
    path.write_text(textwrap.dedent(f"""
        base: {DIGITS}
        preset: smoke
        seeds: 2
        space:
          train.lr: {{grid: [0.001, 0.002]}}
        presets:
          smoke: {{seeds: 3}}
          local: {{}}
    """))
    assert load_sweep(path, preset="local").seeds == 2
    assert load_sweep(path).seeds == 3
    spec = load_sweep(path, seeds=1)
    assert spec.seeds == 1 and [t.label for t in spec.trials] == ["train.lr=0.001", "train.lr=0.002"]
    grid = load_sweep(path, preset="local")
    assert [t.label for t in grid.trials] == ["train.lr=0.001 (seed 0)", "train.lr=0.002 (seed 0)", "train.lr=0.001 (seed 1)", "train.lr=0.002 (seed 1)"]
    assert [t.row for t in grid.trials] == ["train.lr=0.001", "train.lr=0.002"] * 2
    with pytest.raises(SweepError, match=r"^seeds: --seeds expects an integer >= 1, got 0"):
        load_sweep(path, seeds=0)
    with pytest.raises(SweepError, match=r"^seeds: 2 repeats"):
        load_sweep(REPO / "experiments" / "hpo.yaml", preset="smoke", seeds=2)


def test_seeds_options_of_the_commands():
    """`drifting-platform sweep --seeds N` and the ablation scripts' `--seeds N` reach run_sweep."""
    from click.testing import CliRunner

    from drifting_platform.cli import main

    res = CliRunner().invoke(main, ["sweep", "--help"])
    assert "--seeds" in res.output
    res = CliRunner().invoke(main, ["sweep", str(REPO / "experiments" / "hpo.yaml"), "--preset", "smoke", "--seeds", "2"])
    assert res.exit_code != 0 and "seeds: 2 repeats the trials of grid and rows sweeps" in res.output
    res = CliRunner().invoke(main, ["sweep", str(REPO / "experiments" / "antisymmetry.yaml"), "--seeds", "0"])
    assert res.exit_code == 2 and "--seeds" in res.output
    from drifting_platform.launch.ablation import ablation_main

    assert ablation_main(REPO / "experiments" / "hpo.yaml", "doc", ["--preset", "smoke", "--seeds", "2"]) == 2


# --------------------------------------------------------------------------- with Ray


def _packed(tmp_path, resources: str, rows: int = 6, extra: str = ""):
    body = "name: packed\nrows:\n" + "".join(f"  - {{name: r{i}, set: {{seed: {i}}}}}\n" for i in range(rows)) + f"resources: {resources}\n{extra}"
    return load_sweep(_write(tmp_path, body))


@pytest.mark.parametrize("resources, extra, cluster, want_res, want_cap, threads", [
    # four trials share each GPU; the 16 CPUs are split among the 4 that run at once
    ("{cpus_per_trial: auto, gpu: 0.25}", "", {"CPU": 16, "GPU": 1}, {"cpu": 4.0, "gpu": 0.25}, None, 4),
    ("{cpus_per_trial: auto, gpu: 0.25}", "", {"CPU": 16, "GPU": 2}, {"cpu": 2.0, "gpu": 0.25}, None, 2),
    ("{cpus_per_trial: 1, gpu: 0.5}", "", {"CPU": 16, "GPU": 1}, {"cpu": 1.0, "gpu": 0.5}, None, 1),
    # CPUs only: one trial per CPU, or the CPUs shared by max_concurrent trials
    ("{cpus_per_trial: auto}", "", {"CPU": 2}, {"cpu": 1.0, "gpu": 0.0}, None, 1),
    ("{cpus_per_trial: auto}", "max_concurrent: 1\n", {"CPU": 2}, {"cpu": 2.0, "gpu": 0.0}, 1, 2),
    ("{cpus_per_trial: auto}", "", {"CPU": 64}, {"cpu": 10.0, "gpu": 0.0}, None, 10),  # 6 trials on 64 CPUs
    # DDP trials: whole GPUs; auto splits the CPUs over the workers that fit
    ("{cpus_per_trial: auto, workers: 2}", "", {"CPU": 8}, {"cpu": 0, "memory": 64 * 1024**2}, 4, 1),
    ("{cpus_per_trial: auto, workers: 2, gpu: true}", "", {"CPU": 16, "GPU": 4}, {"cpu": 0, "memory": 64 * 1024**2}, 2, 4),
])
def test_sweep_plans_pack_trials_onto_the_cluster(tmp_path, resources, extra, cluster, want_res, want_cap, threads):
    from drifting_platform.launch.plan import describe_plan, plan_resources

    spec = _packed(tmp_path, resources, extra=extra)
    res, cap, resolved = plan_resources(spec, cluster)
    assert res == want_res and cap == want_cap
    assert resolved.resources.cpus_per_trial == threads
    line = describe_plan(resolved, cluster, res, cap)
    assert line.startswith("resources: each trial") and f"{threads:g} CPU(s)" in line, line


@pytest.mark.parametrize("resources, cluster, match", [
    ("{gpu: 0.25, workers: 2}", None, r"resources\.gpu: a fraction of a GPU \(0\.25\) is for trials of workers: 1"),
    ("{gpu: 1.5}", None, r"resources\.gpu: true / false, or a fraction"),
    ("{gpu: -0.5}", None, r"resources\.gpu: true / false, or a fraction"),
    ("{cpus_per_trial: many}", None, r"resources\.cpus_per_trial"),
    ("{gpu: 0.25}", {"CPU": 16}, r"resources\.gpu: trials need 0\.25 of a GPU but the Ray cluster has 0 GPUs"),
    ("{gpu: true, workers: 2}", {"CPU": 16, "GPU": 1}, r"resources\.workers: trials need 2 GPU workers per trial but the Ray cluster has 1 GPUs"),
])
def test_bad_packing_is_refused_with_the_key(tmp_path, resources, cluster, match):
    from drifting_platform.launch.plan import plan_resources

    with pytest.raises(SweepError, match=match):
        spec = _packed(tmp_path, resources)
        plan_resources(spec, cluster)


def test_auto_cpus_give_a_lone_trial_every_cpu_as_threads(ray_local, tmp_path, capsys):
    """`cpus_per_trial: auto` on the local Ray (2 CPUs) with one trial: it holds both CPUs
    and its loop runs 2 torch threads; the sweep says so."""
    from drifting_platform.launch.sweep import run_sweep

    spec = _write(tmp_path, textwrap.dedent(f"""
        name: auto_cpus
        base: {DIGITS}
        preset: smoke
        set: [eval.num_samples=100, train.steps=2, train.log_every=2]
        rows:
          - {{name: only, set: {{seed: 0}}}}
        resources: {{cpus_per_trial: auto}}
        metric: {{name: fid, mode: min}}
    """))
    res = run_sweep(spec, out_root=tmp_path / "sweeps", tracker=False, verbose=0)
    assert [t.status for t in res.trials] == ["FINISHED"], res.trials[0].error
    summary = json.loads((Path(res.trials[0].trial_dir) / "summary.json").read_text())
    assert summary["timing"]["torch_threads"] == 2
    assert "resources: each trial 2 CPU(s) / torch thread(s); up to 1 at once on the cluster's 2 CPUs" in capsys.readouterr().out


def test_make_trainer_polls_ray_train_quickly_unless_told(tmp_path, monkeypatch):
    """Ray Train V2 waits for its controller's poll (2 s by default) on every report,
    checkpoint and at the end; make_trainer sets a short interval unless the user chose one."""
    from drifting_platform.launch import ray_train

    cfg = load_config(DIGITS, "smoke")
    monkeypatch.delenv(ray_train.POLL_ENV, raising=False)
    ray_train.make_trainer(cfg, tmp_path / "a")
    assert os.environ[ray_train.POLL_ENV] == ray_train.POLL_INTERVAL_S == "0.25"
    monkeypatch.setenv(ray_train.POLL_ENV, "1.5")
    ray_train.make_trainer(cfg, tmp_path / "b")
    assert os.environ[ray_train.POLL_ENV] == "1.5"


def _generator_state(path: Path) -> dict:
    return torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=False)["generator"]


def test_gpus_a_connected_cluster_lacks_are_refused_not_waited_for(ray_local, tmp_path):
    """A Ray that is already up (as a cluster is once connected) with no GPUs: asking for GPU
    workers fails at once, before the run directory exists, and leaves that Ray running."""
    from drifting_platform.launch.cluster import ray_init_for_sweep
    from drifting_platform.launch.ray_train import fit_ray
    from drifting_platform.preflight import ResourceError

    assert ray_local.cluster_resources().get("GPU", 0) == 0
    assert ray_init_for_sweep(gpus=0)["CPU"] == 2
    with pytest.raises(ResourceError, match=r"resources\.gpu: a worker group needs 2 GPU\(s\) but the Ray cluster has 0"):
        ray_init_for_sweep(gpus=2, gpu_key="resources.gpu")
    cfg = load_config(DIGITS, "smoke")
    with pytest.raises(ResourceError, match=r"--gpu: .* needs 1 GPU"):
        fit_ray(cfg, tmp_path / "run", workers=1, gpu=True)
    assert not (tmp_path / "run").exists()
    assert ray_local.is_initialized()


def test_two_workers_match_one_worker(ray_local, tmp_path):
    """Data parallelism: 2 gloo workers reach the parameters of 1 process, same global batch."""
    from drifting_platform.launch.ray_train import fit_ray
    from drifting_platform.train import training_loop

    cfg = load_config(DIGITS, "smoke", ["train.steps=4", "train.log_every=2", "train.ckpt_every=2", "train.threads=1", "eval.num_samples=100"])
    assert cfg.sampling.n_classes == 4
    summary = fit_ray(cfg, tmp_path / "w2", workers=2)
    assert summary["steps"] == 4 and "fid" in summary
    # every feature set's global statistics in two all-reduces per step ("xy": the scale's
    # means, every temperature's RMS), not 2 + T per feature set; DDP's buckets besides
    parallel = summary["data_parallel"]
    assert parallel["workers"] == 2 and parallel["drift_loss_all_reduces_per_step"] == 2, parallel
    assert parallel.get("gradient_buckets", 1) >= 1
    training_loop(cfg, tmp_path / "w1", progress=False, evaluate=False)
    a, b = _generator_state(tmp_path / "w2"), _generator_state(tmp_path / "w1")
    assert a.keys() == b.keys()
    for k in a:
        # float32 reduction order differs (gloo all-reduce vs one batch sum); Adam's
        # normalisation turns tiny gradients' rounding into ~1e-5 parameter differences
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=lambda m: f"{k}: {m}")
    # rank 0 reported its checkpoints to Ray: the last one is in the run's storage
    assert list((tmp_path / "w2" / "ray").rglob("checkpoint.pt"))
    lines = (tmp_path / "w2" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]


def test_smoke_sweep_two_rows(ray_local, tmp_path):
    from drifting_platform.launch.sweep import run_sweep

    sweep = tmp_path / "two.yaml"
    sweep.write_text(textwrap.dedent(f"""
        name: two_rows
        base: {DIGITS}
        preset: smoke
        set: [eval.num_samples=100, train.log_every=3]
        rows:
          - {{name: "V+ - V-", set: {{drift.repulsion_scale: 1.0}}}}
          - {{name: "V+ only", set: {{drift.repulsion_scale: 0.0}}}}
        resources: {{cpus_per_trial: 1, workers: 1}}
        max_concurrent: 2
        metric: {{name: fid, mode: min}}
    """))
    tracker = FakeTracker()
    res = run_sweep(sweep, out_root=tmp_path / "sweeps", tracker=tracker, verbose=0)
    assert ray_local.is_initialized()  # run_sweep leaves a Ray it did not start alone
    assert [t.label for t in res.trials] == ["V+ - V-", "V+ only"]
    for t in res.trials:
        assert t.status == "FINISHED", t.error
        assert t.metrics["fid"] > 0 and t.metrics["steps"] == 6
        d = Path(t.trial_dir)
        assert d.parent == tmp_path / "sweeps" / "two_rows" / res.sweep_name
        assert (d / "samples.npz").exists() and (d / "summary.json").exists()
    assert res.trials[1].overrides == {"drift.repulsion_scale": 0.0}
    assert res.parent_run_id == "run1"

    # tracking: one parent, one child per trial with params + tags, metric history at
    # steps 3 and 6, final metrics and artifacts, every run ended FINISHED
    kinds = [c[0] for c in tracker.calls]
    assert kinds[0] == "start_sweep" and tracker.calls[0][1] == "two_rows"
    starts = [c for c in tracker.calls if c[0] == "start_trial"]
    assert sorted(c[2] for c in starts) == ["V+ - V-", "V+ only"]
    for c in starts:
        params, tags, rid = c[3], c[4], c[5]
        assert params["drift.repulsion_scale"] in (0.0, 1.0) and params["train.steps"] == 6
        assert tags["drifting.row"] == c[2] and Path(tags["drifting.trial_dir"]).is_dir()
        steps = [m[3] for m in tracker.calls if m[0] == "log_metrics" and m[1] == rid]
        assert 3 in steps and 6 in steps
        finals = [m[2] for m in tracker.calls if m[0] == "log_metrics" and m[1] == rid and "fid" in m[2]]
        assert finals
        arts = [p for m in tracker.calls if m[0] == "log_artifacts" and m[1] == rid for p in m[2]]
        assert any(p.endswith("samples.npz") for p in arts) and any(p.endswith("samples.png") for p in arts)
        assert ("end_run", rid, "FINISHED", None) in tracker.calls
    assert tracker.calls[-1] == ("end_run", "run1", "FINISHED", None)


@pytest.mark.slow
def test_smoke_sweep_two_rows_two_seeds(ray_local, tmp_path, capsys):
    """2 rows x 2 seeds on real Ray and a real SQLite MLflow store: one parent run, 4 children
    tagged with their row and seed, one progress line each, Tune's trials named after their
    directories, a resume that has nothing to do, and a report of 2 rows of 2 seeds."""
    import mlflow

    from drifting_platform import reports
    from drifting_platform.launch.sweep import run_sweep

    sweep = tmp_path / "seeded.yaml"
    sweep.write_text(textwrap.dedent(f"""
        name: two_seeds
        base: {DIGITS}
        preset: smoke
        seeds: 3
        set: [eval.num_samples=100, train.steps=3, train.log_every=3, seed=4]
        rows:
          - {{name: "V+ - V-", set: {{drift.repulsion_scale: 1.0}}}}
          - {{name: "V+ only", set: {{drift.repulsion_scale: 0.0}}}}
        resources: {{cpus_per_trial: 1, workers: 1}}
        max_concurrent: 2
        metric: {{name: fid, mode: min}}
    """))
    res = run_sweep(sweep, out_root=tmp_path / "sweeps", seeds=2, verbose=0)  # --seeds 2 beats the file's 3
    assert [(t.row, t.seed, t.status) for t in res.trials] == [
        ("V+ - V-", 4, "FINISHED"), ("V+ - V-", 5, "FINISHED"), ("V+ only", 4, "FINISHED"), ("V+ only", 5, "FINISHED")], [t.error for t in res.trials]
    assert [t.label for t in res.trials] == ["V+ - V- (seed 4)", "V+ - V- (seed 5)", "V+ only (seed 4)", "V+ only (seed 5)"]
    sweep_dir = Path(res.sweep_dir)
    names = ["00_V+_-_V-_seed_4", "00_V+_-_V-_seed_5", "01_V+_only_seed_4", "01_V+_only_seed_5"]
    assert [Path(t.trial_dir).name for t in res.trials] == names
    for t in res.trials:
        record = json.loads((Path(t.trial_dir) / "trial.json").read_text())
        assert record["row"] == t.row and record["seed"] == t.seed and record["params"]["seed"] == t.seed
    # two seeds of a row train differently
    a, b = (json.loads((sweep_dir / n / "summary.json").read_text())["fid"] for n in names[:2])
    assert a != b
    # Tune's own trial directories are named after ours
    tune_dirs = [p.name for p in (sweep_dir / "_tune" / "tune").iterdir() if p.is_dir()]
    assert sorted(re.sub(r"_[0-9a-f]+_\d+$", "", d) for d in tune_dirs) == names  # <our name>_<Tune trial id>
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("[")]
    assert sorted(line.split("]")[0] for line in progress) == ["[1/4", "[2/4", "[3/4", "[4/4"]
    for label in ("V+ - V- (seed 4)", "V+ - V- (seed 5)", "V+ only (seed 4)", "V+ only (seed 5)"):
        assert any(f"FINISHED  {label}  fid=" in line for line in progress), progress

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("two_seeds")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("drifting.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and len(runs) == 5
    got = sorted((c.data.tags["drifting.row"], c.data.tags["drifting.seed"], c.info.run_name, c.info.status) for c in children)
    assert got == [("V+ - V-", "4", "V+ - V- (seed 4)", "FINISHED"), ("V+ - V-", "5", "V+ - V- (seed 5)", "FINISHED"),
                   ("V+ only", "4", "V+ only (seed 4)", "FINISHED"), ("V+ only", "5", "V+ only (seed 5)", "FINISHED")]
    assert all(c.data.params["seed"] == c.data.tags["drifting.seed"] for c in children)
    assert parent.data.params["seeds"] == "2" and parent.info.status == "FINISHED"

    # --resume of the finished sweep: nothing to run
    again = run_sweep(sweep, out_root=tmp_path / "sweeps", seeds=2, resume=True)
    assert again.already_complete and again.sweep_dir == res.sweep_dir and len(again.trials) == 4
    # one seed's trial not done: --resume reruns it alone, in its directory and child run
    (sweep_dir / names[3] / "summary.json").unlink()
    kept = (sweep_dir / names[0] / "summary.json").read_bytes()
    capsys.readouterr()
    again = run_sweep(sweep, out_root=tmp_path / "sweeps", seeds=2, resume=True, verbose=0)
    assert not again.already_complete and again.sweep_dir == res.sweep_dir
    assert [(t.label, t.status) for t in again.trials] == [(t.label, "FINISHED") for t in res.trials]
    assert (sweep_dir / names[3] / "summary.json").exists() and (sweep_dir / names[0] / "summary.json").read_bytes() == kept
    assert f"resuming sweep {res.sweep_name}: MLflow parent run {parent.info.run_id} (4 trial runs)" in capsys.readouterr().out
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 5 and all(r.info.status == "FINISHED" for r in runs)  # the same 4 children, none twice

    # the report: one row per row label, the mean of its two seeds, each row's first-seed grid
    rep = reports.write_report("two_seeds", tmp_path / "reports")
    rows = {r["label"]: r for r in rep["rows"]}
    assert list(rows) == ["V+ - V-", "V+ only"]
    fids = {(t.row, t.seed): t.metrics["fid"] for t in res.trials}
    for row in rows.values():
        assert row["n"] == 2 and row["seeds"] == [4, 5]
        assert row["value"] == pytest.approx((fids[(row["label"], 4)] + fids[(row["label"], 5)]) / 2)
    assert "| seeds |" in rep["table_markdown"] and "vs default" in rep["table_markdown"]
    assert "grids" in rep["paths"] and Path(rep["paths"]["grids"]).stat().st_size > 10_000


def test_tune_configs_carry_the_values_and_name_the_trial():
    """Tune's configs hold the trials' own values: a grid / rows record, or an Optuna point
    whose non-scalar choices travel as JSON; `describe` reads both back, and an Optuna
    point's directory depends on its values alone."""
    from drifting_platform.launch.points import describe, tune_choices

    rows = load_sweep(REPO / "experiments" / "antisymmetry.yaml", preset="smoke")
    for t in rows.trials:
        assert describe(rows, {"trial": json.loads(json.dumps(t.record()))}) == t
    hpo = load_sweep(REPO / "experiments" / "hpo.yaml", preset="smoke")
    temps = hpo.space["drift.temperatures"]["choice"]
    assert tune_choices(temps) == [json.dumps(v) for v in temps]
    assert tune_choices(hpo.space["sampling.n_pos"]["choice"]) == [8, 16, 32]
    point = {"train.lr": 1e-3, "drift.temperatures": json.dumps([0.02, 0.05, 0.2]), "sampling.n_pos": 16}
    trial = describe(hpo, point)
    assert trial.params == {"train.lr": 1e-3, "drift.temperatures": [0.02, 0.05, 0.2], "sampling.n_pos": 16}
    assert hpo.trial_config(trial.params).drift.temperatures == (0.02, 0.05, 0.2)
    assert describe(hpo, dict(reversed(point.items()))).dirname == trial.dirname
    assert describe(hpo, {**point, "sampling.n_pos": 8}).dirname != trial.dirname
