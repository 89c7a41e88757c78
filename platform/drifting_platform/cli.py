"""The `drifting-platform` command.

    drifting-platform train experiments/configs/digits.yaml --preset local --out runs/digits
    drifting-platform sample runs/digits --num 1000 --out samples.npz --cfg-scale 1.5
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

REPO_EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def resolve_config_path(path: str) -> Path:
    """A path as given, else the same name under experiments/ or experiments/configs/."""
    p = Path(path)
    if p.exists():
        return p
    for base in (Path("experiments"), Path("experiments/configs"), REPO_EXPERIMENTS, REPO_EXPERIMENTS / "configs"):
        for cand in (base / p, base / f"{p}.yaml"):
            if cand.exists():
                return cand
    raise click.BadParameter(f"{path}: no such config (also looked under experiments/ and experiments/configs/)")


def _load(path: str, preset: str | None, overrides: tuple[str, ...]):
    try:
        return load_config(resolve_config_path(path), preset, overrides)
    except ConfigError as exc:
        raise click.ClickException(f"bad config: {exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="drifting-platform")
def main() -> None:
    """Train, sample, sweep and ablate Drifting Models."""


@main.command()
@click.argument("config")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run directory (checkpoint, metrics, samples, summary.json).")
@click.option("--preset", default=None, help="A preset of the config file (smoke, local, paper, ...).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a config value; repeatable.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if --out holds a checkpoint.")
@click.option("--no-eval", is_flag=True, help="Skip the final metrics and samples.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(config: str, out: str, preset: str | None, overrides: tuple[str, ...], no_resume: bool, no_eval: bool, quiet: bool) -> None:
    """Train one generator in this process (no Ray needed) and write OUT/summary.json."""
    cfg = _load(config, preset, overrides)
    from .train.loop import training_loop

    try:
        summary = training_loop(cfg, out, resume=not no_resume, progress=not quiet, evaluate=not no_eval)
    except ConfigError as exc:
        raise click.ClickException(f"bad config: {exc}") from None
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"results in {Path(out).resolve()} (summary.json, samples.npz, samples.png, metrics.jsonl, checkpoint.pt)")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--num", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False))
@click.option("--cfg-scale", type=click.FloatRange(min=1.0), default=1.0, show_default=True, help="CFG scale alpha (1 = no guidance).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--grid", type=click.Path(dir_okay=False), default=None, help="Also write a picture of the samples.")
def sample(run_dir: str, num: int, out: str, cfg_scale: float, seed: int, grid: str | None) -> None:
    """Draw NUM samples (one network evaluation each) from a trained run's EMA generator."""
    from .train.checkpoint import CheckpointError
    from .inference import load_run, sample_run
    from .sampling import write_grid, write_samples

    try:
        run = load_run(run_dir)
    except (CheckpointError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    samples, labels = sample_run(run, num, cfg_scale=cfg_scale, seed=seed)
    write_samples(out, samples, labels)
    if grid:
        write_grid(grid, samples, labels)
    click.echo(f"wrote {num} samples to {out}")


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
