"""The `drifting-platform` command.

    drifting-platform train experiments/configs/digits.yaml --preset local --out runs/digits
    drifting-platform sample runs/digits --num 1000 --out samples.npz --cfg-scale 1.5
    drifting-platform release convert hf://latent_B_sota --out weights/latent_B_sota
    drifting-platform data export digits --out shards/digits --set size=16
    drifting-platform config show experiments/configs/digits.yaml --preset paper

Heavy imports (torch, data, models) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import rundir
from .config import ConfigError, load_config, preset_names, to_dict
from .home import EXPERIMENTS_DIR
from .rerun import rerun_command


def resolve_config_path(path: str) -> Path:
    """A path as given, else the same name under experiments/ or experiments/configs/."""
    p = Path(path)
    if p.exists():
        return p
    for base in (Path("experiments"), Path("experiments/configs"), EXPERIMENTS_DIR, EXPERIMENTS_DIR / "configs"):
        for cand in (base / p, base / f"{p}.yaml"):
            if cand.exists():
                return cand
    raise click.BadParameter(f"{path}: no such config (also looked under experiments/ and experiments/configs/)")


def _load(path: str, preset: str | None, overrides: tuple[str, ...]):
    try:
        return load_config(resolve_config_path(path), preset, overrides)
    except ConfigError as exc:
        raise click.ClickException(f"bad config: {exc}") from None


def _preflight(cfg, *, pretrain: bool = False, machine: bool = True, workers: int = 0, gpu: bool = False):
    """`preflight.preflight` (registry names, paths, devices) as a one-line click error.
    Ray Train workers on a cluster (RAY_ADDRESS) have devices of their own: not checked here."""
    from .preflight import ResourceError, in_ray_cluster_context, preflight, preflight_pretrain

    device = machine and not (workers and in_ray_cluster_context())
    try:
        return (preflight_pretrain if pretrain else preflight)(cfg, paths=machine, device=device, gpus=workers if gpu else 0)
    except ResourceError as exc:
        raise click.ClickException(str(exc)) from None
    except ConfigError as exc:
        raise click.ClickException(f"bad config: {exc}") from None


def _run_errors() -> tuple:
    """Errors a run stops with that need a message, not a traceback: a refused or unwritable
    checkpoint, divergence (step and metric), an unreachable tracking store, a bad release
    artifact."""
    from .release import ReleaseError
    from .tracking import TrackingUnavailable
    from .train.checkpoint import CheckpointError, CheckpointWriteError
    from .train.loop import TrainingDiverged

    # ReleaseError: a released encoder source (encoder.source) that cannot be read
    return (CheckpointError, CheckpointWriteError, TrainingDiverged, TrackingUnavailable, ReleaseError)


def _interrupted(exc) -> None:
    """SIGINT / SIGTERM stopped a run: one line with where it stopped and the command that
    resumes, then exit 128 + the signal (130 for SIGINT, 143 for SIGTERM)."""
    click.echo(f"{exc.describe()}; resume with: {rerun_command(drop=('--no-resume',))}", err=True)
    raise click.exceptions.Exit(exc.exit_code)


def _drop_if_empty(path: str, created_here: bool) -> None:
    p = Path(path)
    if created_here and p.is_dir() and not any(p.iterdir()):
        p.rmdir()


def _worker_options(fn):
    """--set, --workers and --gpu: what `train` and `pretrain` share."""
    fn = click.option("--gpu", is_flag=True, help="One GPU per Ray Train worker (NCCL); needs --workers.")(fn)
    fn = click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Ray Train DDP workers; 0 trains in this process without Ray.")(fn)
    return click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config value; repeatable.")(fn)


def _check_gpu(gpu: bool, workers: int) -> None:
    if gpu and workers < 1:
        raise click.BadParameter("--gpu needs --workers N (N >= 1)", param_hint="--gpu")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="drifting-platform")
def main() -> None:
    """Train, sample, sweep and ablate Drifting Models."""


@main.command()
@click.argument("config")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run directory (checkpoint, metrics, samples, summary.json).")
@click.option("--preset", default=None, help="A preset of the config file (smoke, local, paper, ...).")
@_worker_options
@click.option("--storage-path", default=None, metavar="DIR|s3://BUCKET/PREFIX", help="Where Ray Train keeps checkpoints and results (default OUT/ray); needs --workers. s3:// uses AWS_ENDPOINT_URL and the AWS credential chain.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if --out holds a checkpoint.")
@click.option("--no-eval", is_flag=True, help="Skip the final metrics and samples.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(config: str, out: str, preset: str | None, overrides: tuple[str, ...], workers: int, gpu: bool, storage_path: str | None, no_resume: bool, no_eval: bool, quiet: bool) -> None:
    """Train one generator and write OUT/summary.json (in this process, or on Ray Train workers)."""
    cfg = _load(config, preset, overrides)
    _check_gpu(gpu, workers)
    if storage_path and workers < 1:
        raise click.BadParameter("--storage-path is Ray Train's storage; it needs --workers N (N >= 1)", param_hint="--storage-path")
    _preflight(cfg, workers=workers, gpu=gpu)  # before --out exists or Ray starts
    from . import tracking  # noqa: F401 - registers the resolvers of models:/ and runs:/ encoder sources
    from .preflight import ResourceError
    from .train.kit import TrainingInterrupted

    fresh = not Path(out).exists()  # a run refused at the start leaves no empty --out behind
    try:
        if workers:
            from .launch.ray_train import fit_ray

            summary = fit_ray(cfg, out, workers=workers, gpu=gpu, storage_path=storage_path, resume=not no_resume, evaluate=not no_eval, progress=not quiet)
        else:
            from .train.loop import training_loop

            summary = training_loop(cfg, out, resume=not no_resume, progress=not quiet, evaluate=not no_eval)
    except ResourceError as exc:  # GPUs a Ray cluster lacks (checked once connected)
        _drop_if_empty(out, fresh)
        raise click.ClickException(str(exc)) from None
    except TrainingInterrupted as exc:
        _drop_if_empty(out, fresh)  # stopped before its first step
        _interrupted(exc)
    except ConfigError as exc:
        _drop_if_empty(out, fresh)
        raise click.ClickException(f"bad config: {exc}") from None
    except _run_errors() as exc:
        _drop_if_empty(out, fresh)
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    click.echo(json.dumps(summary, indent=2))
    written = [n for n in (rundir.SUMMARY, rundir.SAMPLES, rundir.GRID, rundir.METRICS, rundir.CHECKPOINT) if (Path(out) / n).exists()]
    click.echo(f"results in {Path(out).resolve()} ({', '.join(written)})")


@main.command()
@click.argument("config")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False), help="Run directory (default $DRIFTING_HOME/pretrain/NAME-HASH; resumes there).")
@click.option("--preset", default=None, help="A preset of the config file (smoke, local, ...).")
@_worker_options
@click.option("--no-register", is_flag=True, help="Track the run in MLflow but do not register the weights.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if the run directory holds a checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def pretrain(config: str, out: str | None, preset: str | None, overrides: tuple[str, ...], workers: int, gpu: bool, no_register: bool, no_resume: bool, quiet: bool) -> None:
    """Pre-train a feature encoder (SimCLR, MoCo-v2, MAE, the release's Latent-MAE; optional classifier fine-tuning),
    track it in MLflow (experiment "encoders") and register its weights as a model version."""
    from .launch.pretrain import load_pretrain_config, run_pretrain
    from .preflight import ResourceError
    from .train.kit import TrainingInterrupted

    _check_gpu(gpu, workers)
    try:
        cfg = load_pretrain_config(resolve_config_path(config), preset, overrides)
    except ConfigError as exc:
        raise click.ClickException(f"bad config: {exc}") from None
    _preflight(cfg, pretrain=True, workers=workers, gpu=gpu)  # before the run directory or Ray
    try:
        res = run_pretrain(cfg, out, workers=workers, gpu=gpu, register=False if no_register else None, progress=not quiet, resume=not no_resume)
    except ResourceError as exc:
        raise click.ClickException(str(exc)) from None
    except TrainingInterrupted as exc:
        _interrupted(exc)
    except ConfigError as exc:
        raise click.ClickException(f"bad config: {exc}") from None
    except _run_errors() as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    click.echo(json.dumps(res["summary"], indent=2))
    reg = res["registered"]
    click.echo(f"encoder in {res['out_dir']}/encoder; MLflow run {reg['run_id']}")
    if reg.get("version") is not None:
        click.echo(f"registered as {reg['uri']}  (use it with encoder: {{name: {cfg.objective.name}, source: \"{reg['uri']}\"}})")


@main.command()
@click.argument("run_dir", metavar="RUN_DIR|RELEASE|hf://NAME")
@click.option("--num", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False))
@click.option("--cfg-scale", type=click.FloatRange(min=1.0), default=1.0, show_default=True, help="CFG scale alpha (1 = no guidance).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--grid", type=click.Path(dir_okay=False), default=None, help="Also write a picture of the samples (image data of 1 or 3 channels).")
def sample(run_dir: str, num: int, out: str, cfg_scale: float, seed: int, grid: str | None) -> None:
    """Draw NUM samples (one network evaluation each) from a trained run's EMA generator, or
    from a released generator: a release artifact folder (ema_params.msgpack + metadata.json),
    a folder written by `release convert`, or hf://NAME. Released generators sample in their
    own space with labels balanced over their classes; latent models' samples are SD-VAE
    latents, which this command does not decode."""
    if not out.endswith(".npz"):  # before any sampling: NumPy data in a .png helps nobody
        hint = f"; for a picture add --grid {out}" if out.lower().endswith((".png", ".jpg", ".jpeg")) else ""
        raise click.ClickException(f"--out {out}: the samples file is NumPy .npz; give --out NAME.npz{hint}")
    from .config import ConfigError
    from .inference import load_release_run, load_run, sample_release, sample_run
    from .release import ReleaseError, is_release_source
    from .sampling import write_grid, write_samples
    from .train.checkpoint import CheckpointError

    try:
        if is_release_source(run_dir):
            rel = load_release_run(run_dir)
            samples, labels = sample_release(rel, num, cfg_scale=cfg_scale, seed=seed)
        else:
            if not (Path(run_dir) / rundir.CHECKPOINT).is_file():
                what = "a folder without checkpoint.pt" if Path(run_dir).is_dir() else "no such folder"
                raise click.ClickException(f"{run_dir}: not a run directory ({what}), a release artifact folder, a converted folder or hf://NAME")
            samples, labels = sample_run(load_run(run_dir), num, cfg_scale=cfg_scale, seed=seed)
    except (CheckpointError, ConfigError, ReleaseError) as exc:
        raise click.ClickException(str(exc)) from None
    if grid and samples.ndim == 4 and samples.shape[1] not in (1, 3):
        raise click.ClickException(f"--grid: samples have {samples.shape[1]} channels (latents?); only 1- or 3-channel images can be pictured")
    write_samples(out, samples, labels)
    if grid:
        write_grid(grid, samples, labels)
    click.echo(f"wrote {num} samples {tuple(samples.shape[1:])} to {out}")


@main.command()
@click.argument("source")
@click.option("--num", type=click.IntRange(min=20), default=50000, show_default=True, help="Samples per CFG scale (balanced over classes).")
@click.option("--cfg-scale", "cfg_scales", type=click.FloatRange(min=1.0), multiple=True, help="CFG scale alpha; repeat for several [1.0].")
@click.option("--ref", "ref", required=True, type=click.Path(dir_okay=False), help="Reference statistics .npz (mu, sigma; features for precision / recall).")
@click.option("--extractor", type=click.Choice(["inception", "digits"]), default="inception", show_default=True)
@click.option("--inception-weights", default=None, help="Local torch-fidelity Inception weights [$DRIFTING_INCEPTION_WEIGHTS].")
@click.option("--vae", default=None, help="SD-VAE for latent generators (folder or cached HF name) [the data's, else stabilityai/sd-vae-ft-mse].")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Ray actors (0: this process).")
@click.option("--gpu", is_flag=True, help="One GPU per actor.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="Results JSON [RUN_DIR/evaluation.json, else ./evaluation.json].")
@click.option("--grid", default=None, type=click.Path(dir_okay=False), help="Also write a grid of samples at the best scale (PNG).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def evaluate(source: str, num: int, cfg_scales: tuple[float, ...], ref: str, extractor: str, inception_weights: str | None, vae: str | None,
             workers: int, gpu: bool, seed: int, batch_size: int, out: str | None, grid: str | None, quiet: bool) -> None:
    """The ImageNet protocol for SOURCE (a run directory, a release folder or hf://NAME):
    NUM samples per CFG scale with balanced labels, latents decoded by the SD-VAE, FID
    against REF's statistics, Inception Score (10 splits), precision / recall (k = 3, when REF
    holds features). Inception weights come from a local file only."""
    import os

    from .data.vae import VAEError
    from .eval.fidelity import InceptionWeightsMissing
    from .eval.protocol import ReferenceError, read_reference
    from .release import ReleaseError, is_release_source
    from .train.checkpoint import CheckpointError

    scales = list(cfg_scales) or [1.0]
    weights = inception_weights or os.environ.get("DRIFTING_INCEPTION_WEIGHTS")
    try:  # the inputs, before any model is built or worker started
        read_reference(ref)
        if extractor == "inception":
            if not weights:
                raise InceptionWeightsMissing("--inception-weights: the Inception extractor needs a local weights file (or $DRIFTING_INCEPTION_WEIGHTS); nothing is downloaded")
            if not os.path.isfile(weights):
                raise InceptionWeightsMissing(f"--inception-weights: {weights}: no such file")
        if not is_release_source(source) and not (Path(source) / rundir.CHECKPOINT).is_file():
            raise CheckpointError(f"{source}: not a run directory (no checkpoint.pt), a release artifact folder or hf://NAME")
        if gpu:
            from .preflight import in_ray_cluster_context, require_local_gpus

            if not in_ray_cluster_context():
                require_local_gpus(1, "--gpu")
    except (ReferenceError, InceptionWeightsMissing, CheckpointError) as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # ResourceError
        raise click.ClickException(str(exc)) from None
    if out is None:
        out = str(Path(source) / "evaluation.json") if Path(source).is_dir() and not is_release_source(source) else "evaluation.json"
    from .launch.evaluate import run_evaluation

    try:
        res = run_evaluation(source, num=num, cfg_scales=scales, ref=ref, vae=vae, extractor=extractor, inception_weights=weights,
                             workers=workers, gpu=gpu, seed=seed, batch_size=batch_size, progress=not quiet, keep_images=100 if grid else 0)
    except (ReferenceError, VAEError, ReleaseError, CheckpointError, InceptionWeightsMissing) as exc:
        raise click.ClickException(str(exc)) from None
    images = res.pop("images", None)
    from .train.evaluate import alpha_key

    for a in scales:
        row = "  ".join(f"{k} {res[alpha_key(a, k)]:.3f}" for k in ("fid", "is", "precision", "recall") if alpha_key(a, k) in res)
        click.echo(f"cfg {a:g}: {row}")
    if "best_alpha" in res:
        click.echo(f"best: cfg {res['best_alpha']:g}, FID {res['fid_best_alpha']:.3f} ({num} samples)")
    payload = {"source": str(source), "ref": os.path.abspath(ref), "extractor": extractor, "seed": seed, "metrics": res}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(payload, indent=2) + "\n")
    if grid and images is not None:
        from torchvision.utils import save_image

        Path(grid).parent.mkdir(parents=True, exist_ok=True)
        save_image(images.float() / 255.0, grid, nrow=10, padding=1)
    click.echo(f"wrote {out}" + (f" and {grid}" if grid else ""))


@main.group()
def release() -> None:
    """The authors' released models (Hugging Face Goodeat/drifting): inspect, convert.

    PATH is a release artifact folder (ema_params.msgpack + metadata.json), a folder written
    by `release convert`, or hf://NAME (huggingface_hub's cache; downloaded there when there
    is network, read from it offline, HF_HUB_OFFLINE=1 forbids downloads)."""


def _release_call(fn, *args):
    from .release import ReleaseError

    try:
        return fn(*args)
    except ReleaseError as exc:
        raise click.ClickException(str(exc)) from None


@release.command("convert")
@click.argument("path", metavar="PATH|hf://NAME")
@click.option("--out", "out", required=True, type=click.Path(), help="Folder for model.safetensors + release.json (created).")
def release_convert(path: str, out: str) -> None:
    """Write the weights of a release artifact as safetensors (no pickle) with its config;
    the folder loads with load_release and works wherever PATH does (model.init, encoder
    source, sample)."""
    from .release import CONVERTED_META, CONVERTED_WEIGHTS, convert_release

    dest = _release_call(convert_release, path, out)
    meta = json.loads((dest / CONVERTED_META).read_text())
    ident = meta.get("identity", {})
    click.echo(f"{meta['kind']} model, {meta['parameters']:,} parameters, from {ident.get('name')} (sha256 {ident.get('sha256')})")
    click.echo(f"wrote {dest / CONVERTED_WEIGHTS} and {dest / CONVERTED_META}")


@release.command("info")
@click.argument("path", metavar="PATH|hf://NAME")
def release_info(path: str) -> None:
    """Print an artifact's kind, model_config, parameter count and identity (name, sha256),
    after reading and checking every parameter."""
    from .release import parameter_count, read_release

    kind, model_config, state, identity = _release_call(read_release, path)
    click.echo(json.dumps({"kind": kind, "parameters": parameter_count(state), "model_config": model_config, "identity": identity}, indent=2))


@main.command()
@click.argument("sweep_file")
@click.option("--preset", default=None, help="Preset of the sweep and of its base config (smoke, local, ...).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override applied to every trial's config.")
@click.option("--out-root", default=None, type=click.Path(file_okay=False), help="Where trial directories go (default $DRIFTING_HOME/sweeps).")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Run every row / grid point N times, seeds base + 0..N-1 (overrides the file's `seeds:`; grid and rows sweeps).")
@click.option("--resume", is_flag=True, help="Continue the latest sweep of this experiment instead of starting a new one.")
@click.option("--no-report", is_flag=True, help="Do not print / write the report table at the end.")
@click.option("--storage-path", default=None, metavar="DIR|s3://BUCKET/PREFIX", help="Where Ray Tune keeps its state and multi-worker trials their Ray Train checkpoints (default: the sweep directory). s3:// uses AWS_ENDPOINT_URL and the AWS credential chain.")
def sweep(sweep_file: str, preset: str | None, overrides: tuple[str, ...], out_root: str | None, seeds: int | None, resume: bool, no_report: bool, storage_path: str | None) -> None:
    """Run a Ray Tune sweep (grid, rows or Optuna) tracked in MLflow; then print its table."""
    from .launch.sweep import SweepInterrupted, run_sweep  # Ray loads only once the sweep file is valid

    path = resolve_config_path(sweep_file)
    try:
        result = run_sweep(path, preset=preset, overrides=overrides, out_root=out_root, resume=resume, storage_path=storage_path, seeds=seeds)
    except ConfigError as exc:  # a SweepError or a trial's ConfigError
        raise click.ClickException(f"bad sweep: {exc}") from None
    except _run_errors() as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    except SweepInterrupted as exc:  # the runs are KILLED, no report was written
        click.echo(str(exc), err=True)
        click.echo(f"resume with: {rerun_command(add=('--resume',))}", err=True)
        sys.exit(exc.exit_code)
    if result.already_complete:
        click.echo(f"sweep {result.experiment} ({result.sweep_dir}) is already complete: {result.counts()}; nothing to run")
        if result.synced:  # what the tracking store lacked is written now, and so is the report
            click.echo(f"tracking: wrote the {result.synced} writes the sweep had kept while the store was unreachable")
            if not no_report:
                _print_report(result.experiment)
        elif not no_report:
            _print_report_paths(result.experiment)
        return
    for t in result.trials:
        shown = {k: round(v, 4) for k, v in t.metrics.items() if k in (result.metric.name, "kid", "mmd", "modes_covered", "steps", "seconds")}
        click.echo(f"  {t.status:9s} {t.label:28s} {shown}" + (f"  error: {t.error.splitlines()[0]}" if t.error else ""))
    click.echo(f"trials in {result.sweep_dir}")
    if result.incomplete:  # the store went away and is still away: nothing lost, tell what is pending
        from .launch.sweep import EXIT_TRACKING_PENDING, incomplete_message

        click.echo(incomplete_message(result, rerun_command(add=("--resume",))), err=True)
        sys.exit(EXIT_TRACKING_PENDING)
    if not no_report and result.parent_run_id:
        _print_report(result.experiment)


@main.command()
@click.argument("sweep_dirs", nargs=-1, type=click.Path(file_okay=False))
def sync(sweep_dirs: tuple[str, ...]) -> None:
    """Write the tracking writes that sweeps kept while the store was unreachable.

    SWEEP_DIRS: sweep directories (default: every sweep under $DRIFTING_HOME/sweeps whose
    journal, tracking.jsonl, still holds writes)."""
    from .home import sweeps_root
    from .launch.sweep import EXIT_TRACKING_PENDING, pending_writes, sync_sweep
    from .tracking import TrackingUnavailable, check_tracking_store

    dirs = [Path(d) for d in sweep_dirs] or sorted(p.parent for p in sweeps_root().glob("*/*/tracking.jsonl"))
    for d in dirs:
        if not (d / "tracking.jsonl").exists():
            raise click.ClickException(f"{d}: no tracking journal (tracking.jsonl) here; is it a sweep directory?")
    todo = [d for d in dirs if pending_writes(d)]
    if not todo:
        click.echo("nothing to sync: every sweep's tracking writes are in the store")
        return
    try:
        check_tracking_store()
    except TrackingUnavailable as exc:
        raise click.ClickException(f"{exc} The writes stay in the sweeps' journals.") from None
    left = 0
    for d in todo:
        out = sync_sweep(d)
        left += out["pending"]
        runs = len({r["run"] for r in out["incomplete"]})
        state = "complete" if not out["pending"] else f"{out['pending']} writes of {runs} runs still pending"
        click.echo(f"{d}: wrote {out['written']} writes; {state}")
    if left:
        sys.exit(EXIT_TRACKING_PENDING)


def _print_report_paths(name: str) -> None:
    from .reports import report_paths

    paths = [p for p in report_paths(name).values() if p.exists()]
    if paths:
        click.echo("report files: " + ", ".join(str(p) for p in paths))


def _print_report(name: str, out_dir: str | None = None) -> None:
    from .reports import write_report

    rep = write_report(name, out_dir)
    click.echo(rep["table_markdown"])
    click.echo("report files: " + ", ".join(str(p) for p in rep["paths"].values()))
    click.echo("compare the runs in the MLflow UI: drifting-platform ui  (it prints the links, this sweep's by fid)")


@main.command()
@click.argument("name")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Where the Markdown, CSV and PNG go.")
def report(name: str, out_dir: str | None) -> None:
    """Print the table of experiment NAME's latest sweep with the paper's values beside."""
    try:
        _print_report(name, out_dir)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind; keep 127.0.0.1 unless you mean to share it.")
def ui(port: int, host: str) -> None:
    """Open the MLflow UI on the platform's tracking store.

    Prints links once the server answers: the experiments list, the latest sweep's runs table
    and its child runs compared by fid. Ctrl-C (SIGINT), SIGTERM and SIGHUP stop the server
    and all its worker processes; the command then exits 0."""
    import signal
    import tempfile

    from .tracking import port_in_use, serve_ui, stop_ui, tracking_uri, ui_links, wait_for_ui

    if port_in_use(port, host):
        raise click.ClickException(f"port {port} on {host} is in use (another MLflow UI?); choose a free one with --port")

    class _Stop(Exception):
        pass

    def _on_signal(signum, frame):  # noqa: ARG001
        raise _Stop(signum)

    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    base = f"http://{url_host}:{port}"
    click.echo(f"MLflow UI for {tracking_uri()} on {base}  (Ctrl-C stops it)")
    proc, keep_log = None, False
    with tempfile.NamedTemporaryFile(prefix="drifting-ui-", suffix=".log", delete=False) as f:
        log_path = Path(f.name)
    try:
        proc = serve_ui(port=port, host=host, log_path=log_path)  # assigned at once: a signal now still stops it
        if not wait_for_ui(f"{base}/", timeout=120, proc=proc):
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise click.ClickException(f"the MLflow UI did not answer on {base} within 120 s; its last output: " + " | ".join(tail))
        try:
            links = ui_links(base)
        except Exception as exc:  # noqa: BLE001 - the UI itself works; the links are a courtesy
            links = {"experiments": f"{base}/#/experiments"}
            click.echo(f"(could not read the latest sweep: {type(exc).__name__}: {exc})")
        click.echo(f"experiments:             {links['experiments']}")
        if "runs" in links:
            click.echo(f"latest sweep, runs:      {links['runs']}")
        if "compare" in links:
            click.echo(f"latest sweep, by fid:    {links['compare']}")
            click.echo(f"latest sweep, compare:   {links['compare_runs']}")
        proc.wait()
        keep_log = True
        raise click.ClickException(f"the MLflow server exited by itself (code {proc.returncode}); its output: {log_path}")
    except _Stop as stop:
        click.echo(f"stopping the MLflow UI ({signal.Signals(stop.args[0]).name})")
    finally:
        for sig in old:  # a second Ctrl-C while stopping must not leave the server behind
            signal.signal(sig, signal.SIG_IGN)
        if proc is not None:
            stop_ui(proc, port=port, host=host)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if not keep_log:
            log_path.unlink(missing_ok=True)


@main.group()
def data() -> None:
    """Data sets and Parquet shards."""


@data.command("export")
@click.argument("name")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--set", "options", multiple=True, metavar="KEY=VALUE", help="Data option: size, root, path, n, limit, seed, shard_size.")
def data_export(name: str, out: str, options: tuple[str, ...]) -> None:
    """Write data set NAME (toy, digits, mnist, ...) to Parquet shards under OUT."""
    import dataclasses
    import inspect

    import yaml

    from .config import DataConfig, build_dataclass
    from .data import DATASETS, build_dataset, write_shards
    from .preflight import allowed, check_data

    # the options: build_dataset's keywords and write_shards' shard_size, values read as YAML
    keys = [p.name for p in inspect.signature(build_dataset).parameters.values() if p.kind is p.KEYWORD_ONLY] + ["shard_size"]
    kwargs = {}
    try:
        for item in options:
            if "=" not in item:
                raise ConfigError(f"--set {item}: expected KEY=VALUE")
            k, v = item.split("=", 1)
            allowed(f"--set {k}", k, keys, "a data option")
            kwargs[k] = yaml.safe_load(v)
        allowed("NAME", name, DATASETS, "a data set")
        shard_size = kwargs.pop("shard_size", 4096)
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigError(f"--set shard_size: expected an integer >= 1, got {shard_size!r}")
        fields = {f.name for f in dataclasses.fields(DataConfig)}
        try:  # types as a config's data section has them
            data_cfg = build_dataclass(DataConfig, {"name": name, **{k: v for k, v in kwargs.items() if k in fields}})
        except ConfigError as exc:
            raise ConfigError(f"--set {exc}") from None
        check_data(data_cfg, prefix="--set ")  # the files it reads (shards, a torchvision root)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _check_writable(out)  # before any data is read
    try:
        ds = build_dataset(name, **kwargs)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        raise click.ClickException(str(exc)) from None
    files = write_shards(ds, out, shard_size=shard_size)
    click.echo(f"wrote {len(ds.x)} samples of {name} {tuple(ds.shape)} to {len(files)} shard(s) under {out}")


@data.command("prepare")
@click.argument("kind", type=click.Choice(["imagenet", "imagefolder"]))
@click.argument("root", type=click.Path())
@click.option("--out", "out", required=True, help="Output folder for the shards and manifest.json (local or s3://).")
@click.option("--vae", "vae", default=None, help="VAE folder (save_pretrained) or a Hugging Face name in the local cache [stabilityai/sd-vae-ft-mse].")
@click.option("--resolution", type=click.IntRange(min=8), default=256, show_default=True, help="ADM centre-crop side in pixels.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1024, show_default=True, help="Images per shard.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per VAE forward.")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True, help="Ray Data actors (0: this process, no Ray).")
@click.option("--gpu", is_flag=True, help="One GPU per actor.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True, help="Unreadable images: count and skip them, or stop naming the first.")
@click.option("--name", default=None, help="Data set name recorded in the shards [imagenet, else the folder name].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def data_prepare(kind: str, root: str, out: str, vae: str | None, resolution: int, shard_size: int, batch_size: int, workers: int,
                 gpu: bool, on_error: str, name: str | None, quiet: bool) -> None:
    """Turn an ImageFolder ROOT (ROOT/<class>/<image>; labels from the sorted class folders)
    into SD-VAE latent shards under OUT: the release's ADM centre crop, the posterior moments
    of each image and of its horizontal flip. A rerun skips the shards already written."""
    from .data.prepare import PrepareError, make_plan
    from .data.vae import DEFAULT_VAE, VAEError, resolve_vae_source, vae_files_sha256
    from .launch.prepare import run_prepare
    from .preflight import ResourceError, require_local_gpus, in_ray_cluster_context

    source = vae or DEFAULT_VAE
    try:  # everything that can be wrong with the input, before any image is encoded
        folder = resolve_vae_source(source)
        plan = make_plan(root, out, vae=source, vae_sha256=vae_files_sha256(folder), resolution=resolution, shard_size=shard_size,
                         name=name or ("imagenet" if kind == "imagenet" else None), on_error=on_error, batch_size=batch_size)
        if gpu and not in_ray_cluster_context():
            require_local_gpus(1, "--gpu")
    except (PrepareError, VAEError, ResourceError) as exc:
        raise click.ClickException(str(exc)) from None
    _check_writable(out)
    if kind == "imagenet" and len(plan.classes) != 1000:
        click.echo(f"note: {root} has {len(plan.classes)} class folders (ImageNet-1k has 1000)", err=True)
    click.echo(f"{len(plan.items)} images of {len(plan.classes)} classes -> {plan.num_shards} shard(s) under {out}", err=True)
    try:
        res = run_prepare(plan, workers=workers, gpu=gpu, progress=not quiet)
    except PrepareError as exc:  # --on-error fail: the unreadable image, named
        raise click.ClickException(str(exc)) from None
    m = res["manifest"]
    failed = f", {len(m['failed'])} unreadable image(s) skipped (listed in manifest.json)" if m["failed"] else ""
    click.echo(f"wrote {res['written']} shard(s), reused {len(res['skipped'])}: {m['rows']} latents {tuple(m['shape'])}{failed}; "
               f"{res['images_per_second']:.1f} images/s")


def _check_writable(out: str) -> None:
    """Refuse an --out where nothing can be written, leaving nothing behind: make the folder
    (and missing parents) and a probe file, then remove what was made. s3:// is not probed."""
    import os
    import tempfile

    from .storage import is_s3

    if is_s3(out):
        return
    path = Path(out).expanduser().absolute()
    made = []  # the folders created here, innermost last
    p = path
    while not p.exists() and p != p.parent:
        made.insert(0, p)
        p = p.parent
    try:
        for d in made:
            d.mkdir()
        fd, probe = tempfile.mkstemp(prefix=".drifting-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise click.ClickException(f"--out {out}: cannot write there ({exc.strerror or type(exc).__name__})") from None
    finally:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass


@main.group("config")
def config_group() -> None:
    """Inspect experiment configs."""


@config_group.command("show")
@click.argument("config")
@click.option("--preset", default=None)
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE")
@click.option("--no-machine-check", is_flag=True, help="Skip the checks of this machine (data files, weights, CUDA): show a cluster preset on a laptop.")
def config_show(config: str, preset: str | None, overrides: tuple[str, ...], no_machine_check: bool) -> None:
    """Print the fully resolved, validated config (registry names, paths and devices checked
    as `train` checks them)."""
    import yaml

    cfg = _preflight(_load(config, preset, overrides), machine=False)  # registry names, ranges
    if not no_machine_check:  # files and devices of this machine
        try:
            _preflight(cfg)
        except click.ClickException as exc:
            exc.message += " (--no-machine-check shows the config without checking this machine)"
            raise
    click.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    click.echo(f"# presets: {', '.join(preset_names(resolve_config_path(config)))}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
