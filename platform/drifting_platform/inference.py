"""Load a finished (or interrupted) run directory and sample from its EMA generator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config, from_dict
from .sampling import balanced_labels, generate
from .train.checkpoint import CheckpointError, load_checkpoint


@dataclass
class Run:
    cfg: Config
    dataset: object
    generator: torch.nn.Module
    step: int


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Rebuild the run's data set and generator from its checkpoint (weights_only load)."""
    from .train.loop import build_data, build_model

    state = load_checkpoint(run_dir, map_location=device)
    if "ema" not in state or "config" not in state:
        raise CheckpointError(f"{run_dir}: checkpoint has no EMA generator or config")
    cfg = from_dict(state["config"])
    dataset = build_data(cfg)
    gen = build_model(cfg, dataset)
    try:
        gen.load_state_dict(state["ema"])
    except RuntimeError as exc:
        raise CheckpointError(f"{run_dir}: weights do not fit the configured generator: {exc}") from None
    return Run(cfg=cfg, dataset=dataset, generator=gen.to(device).eval(), step=int(state["step"]))


def sample_run(run: Run, num: int, *, cfg_scale: float = 1.0, seed: int = 0, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Contract 4: (samples float32 in output space, labels int64 balanced over classes)."""
    labels = balanced_labels(num, run.dataset.num_classes)
    x = generate(run.generator, labels, cfg_scale=cfg_scale, seed=seed, device=device)
    return run.dataset.to_output(x).astype(np.float32), labels.numpy().astype(np.int64)
