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

from .config import ConfigError, load_config, preset_names, to_dict
from .home import EXPERIMENTS_DIR


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


def _resume_command() -> str:
    """The command line that was run, as typed, without --no-resume: what continues an
    interrupted run (`python -m drifting_platform.cli ...` stays so; the installed script is
    `drifting-platform` when that is what PATH finds, else the path it was run by)."""
    import os
    import shlex
    import shutil

    orig = list(getattr(sys, "orig_argv", []))
    if "-m" in orig[:-1]:
        prog = orig[: orig.index("-m") + 2]
    else:
        script = sys.argv[0]
        found = shutil.which("drifting-platform")
        same = found is not None and os.path.exists(script) and os.path.samefile(found, script)
        prog = ["drifting-platform" if same else script]
    return shlex.join(prog + [a for a in sys.argv[1:] if a != "--no-resume"])


def _interrupted(exc) -> None:
    """SIGINT / SIGTERM stopped a run: one line with where it stopped and the command that
    resumes, then exit 128 + the signal (130 for SIGINT, 143 for SIGTERM)."""
    click.echo(f"{exc.describe()}; resume with: {_resume_command()}", err=True)
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
    from . import tracking  # noqa: F401 - registers the resolvers of models:/ and runs:/ encoder sources
    from .train.kit import TrainingInterrupted

    fresh = not Path(out).exists()  # a run refused at the start leaves no empty --out behind
    try:
        if workers:
            from .launch.ray_train import fit_ray

            summary = fit_ray(cfg, out, workers=workers, gpu=gpu, storage_path=storage_path, resume=not no_resume, evaluate=not no_eval, progress=not quiet)
        else:
            from .train.loop import training_loop

            summary = training_loop(cfg, out, resume=not no_resume, progress=not quiet, evaluate=not no_eval)
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
    click.echo(f"results in {Path(out).resolve()} (summary.json, samples.npz, samples.png, metrics.jsonl, checkpoint.pt)")


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
    from .train.kit import TrainingInterrupted

    _check_gpu(gpu, workers)
    try:
        cfg = load_pretrain_config(resolve_config_path(config), preset, overrides)
        res = run_pretrain(cfg, out, workers=workers, gpu=gpu, register=False if no_register else None, progress=not quiet, resume=not no_resume)
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
            if not Path(run_dir).is_dir():
                raise click.ClickException(f"{run_dir}: not a run directory, a release artifact folder, a converted folder or hf://NAME")
            samples, labels = sample_run(load_run(run_dir), num, cfg_scale=cfg_scale, seed=seed)
    except (CheckpointError, ConfigError, ReleaseError) as exc:
        raise click.ClickException(str(exc)) from None
    if grid and samples.ndim == 4 and samples.shape[1] not in (1, 3):
        raise click.ClickException(f"--grid: samples have {samples.shape[1]} channels (latents?); only 1- or 3-channel images can be pictured")
    write_samples(out, samples, labels)
    if grid:
        write_grid(grid, samples, labels)
    click.echo(f"wrote {num} samples {tuple(samples.shape[1:])} to {out}")


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
@click.option("--resume", is_flag=True, help="Continue the latest sweep of this experiment instead of starting a new one.")
@click.option("--no-report", is_flag=True, help="Do not print / write the report table at the end.")
@click.option("--storage-path", default=None, metavar="DIR|s3://BUCKET/PREFIX", help="Where Ray Tune keeps its state and multi-worker trials their Ray Train checkpoints (default: the sweep directory). s3:// uses AWS_ENDPOINT_URL and the AWS credential chain.")
def sweep(sweep_file: str, preset: str | None, overrides: tuple[str, ...], out_root: str | None, resume: bool, no_report: bool, storage_path: str | None) -> None:
    """Run a Ray Tune sweep (grid, rows or Optuna) tracked in MLflow; then print its table."""
    from .launch.sweep import SweepInterrupted, resume_command, run_sweep  # Ray loads only once the sweep file is valid

    path = resolve_config_path(sweep_file)
    try:
        result = run_sweep(path, preset=preset, overrides=overrides, out_root=out_root, resume=resume, storage_path=storage_path)
    except ConfigError as exc:  # a SweepError or a trial's ConfigError
        raise click.ClickException(f"bad sweep: {exc}") from None
    except _run_errors() as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    except SweepInterrupted as exc:  # the runs are KILLED, no report was written
        click.echo(str(exc), err=True)
        click.echo(f"resume with: {resume_command(sys.argv)}", err=True)
        sys.exit(exc.exit_code)
    if result.already_complete:
        click.echo(f"sweep {result.experiment} ({result.sweep_dir}) is already complete: {result.counts()}; nothing to run")
        if not no_report:
            _print_report_paths(result.experiment)
        return
    for t in result.trials:
        shown = {k: round(v, 4) for k, v in t.metrics.items() if k in (result.metric.name, "kid", "mmd", "modes_covered", "steps", "seconds")}
        click.echo(f"  {t.status:9s} {t.label:28s} {shown}" + (f"  error: {t.error.splitlines()[0]}" if t.error else ""))
    click.echo(f"trials in {result.sweep_dir}")
    if not no_report and result.parent_run_id:
        _print_report(result.experiment)


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
    click.echo("compare the runs in the MLflow UI: drifting-platform ui  (then open http://127.0.0.1:5000)")


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
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind; keep 127.0.0.1 unless you mean to share it.")
def ui(port: int, host: str) -> None:
    """Open the MLflow UI on the platform's tracking store."""
    from .tracking import serve_ui, tracking_uri

    click.echo(f"MLflow UI for {tracking_uri()} on http://{host}:{port}  (Ctrl-C stops it)")
    proc = serve_ui(port=port, host=host)
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()


@main.group()
def data() -> None:
    """Data sets and Parquet shards."""


@data.command("export")
@click.argument("name")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--set", "options", multiple=True, metavar="KEY=VALUE", help="Data option: size, root, n, limit, seed, shard_size.")
def data_export(name: str, out: str, options: tuple[str, ...]) -> None:
    """Write data set NAME (toy, digits, mnist, ...) to Parquet shards under OUT."""
    import yaml

    from .data import build_dataset, write_shards

    kwargs = {}
    for item in options:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--set")
        k, v = item.split("=", 1)
        kwargs[k] = yaml.safe_load(v)
    shard_size = kwargs.pop("shard_size", 4096)
    try:
        ds = build_dataset(name, **kwargs)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        raise click.ClickException(str(exc)) from None
    files = write_shards(ds, out, shard_size=shard_size)
    click.echo(f"wrote {len(ds.x)} samples of {name} {tuple(ds.shape)} to {len(files)} shard(s) under {out}")


@main.group("config")
def config_group() -> None:
    """Inspect experiment configs."""


@config_group.command("show")
@click.argument("config")
@click.option("--preset", default=None)
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE")
def config_show(config: str, preset: str | None, overrides: tuple[str, ...]) -> None:
    """Print the fully resolved, validated config."""
    import yaml

    cfg = _load(config, preset, overrides)
    click.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    click.echo(f"# presets: {', '.join(preset_names(resolve_config_path(config)))}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
