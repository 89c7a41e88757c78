"""The release's Latent-MAE as a frozen feature encoder (`encoder.name: release_mae`).

The network and its feature recipe (`release_activations`) are `models.release_mae.ReleaseMAE`;
this module loads one from a source - a release artifact (`release.load_release`) or what
`drifting-platform pretrain` wrote with objective `release_mae` - and serves its features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..encoder_artifact import META_FILE, WEIGHTS_FILE, artifact_folder, is_registry_uri, pinned_source, read_meta, resolve_source
from ..models.release_mae import ReleaseMAE
from ..release import is_release_source, load_release
from .base import Encoder, register_encoder

__all__ = ["ReleaseMAE", "ReleaseMAEEncoder", "load_pretrained_mae"]


def load_pretrained_mae(source: str, input_shape: Sequence[int]) -> tuple[ReleaseMAE, dict]:
    """(ReleaseMAE in eval mode, provenance) for what `drifting-platform pretrain` wrote with
    objective `release_mae`: its run folder, the run's `encoder/` folder, or a registry URI
    (`models:/NAME/VERSION`, `models:/NAME/latest`, `runs:/...`, resolved like learned
    encoders' sources)."""
    given = str(source)
    if not is_registry_uri(source):
        p = Path(source).expanduser()
        folder = artifact_folder(p)  # the run folder's encoder/, or the artifact folder itself
        if folder is None and not (p.is_file() and p.name == META_FILE):
            raise FileNotFoundError(
                f"release_mae: {source}: not a release artifact (ema_params.msgpack + metadata.json), a converted one "
                f"(model.safetensors + release.json), hf://NAME, nor a `pretrain` output ({META_FILE} + {WEIGHTS_FILE})")
        source = str(folder) if folder is not None else source
    path = resolve_source(source)
    meta = read_meta(path)
    if meta.get("objective") != "release_mae" or not isinstance(meta.get("model_config"), dict):
        raise ValueError(f"encoder 'release_mae': {source} holds a {meta.get('objective')!r} encoder, not a release MAE; use encoder.name: {meta.get('objective')}")
    trained = tuple(int(s) for s in meta.get("input_shape", ()))
    if trained and trained != tuple(int(s) for s in input_shape):
        raise ValueError(f"encoder 'release_mae': {source} was trained on inputs {trained}, the data here are {tuple(input_shape)} (pre-train on the same data.size)")
    module = ReleaseMAE(**meta["model_config"])
    module.load_state_dict(torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    provenance = {
        "source": given, "pinned": pinned_source(path), "objective": "release_mae", "config_hash": meta.get("config_hash"),
        "model_config": dict(meta["model_config"]), "finetuned": bool(meta.get("finetuned", False)),
    }
    return module.eval(), provenance


@register_encoder("release_mae")
class ReleaseMAEEncoder(Encoder):
    """The release's Latent-MAE as a frozen feature encoder.

    source: a release artifact folder (ema_params.msgpack + metadata.json), `hf://NAME` or a
    folder written by `drifting-platform release convert` (all three read by
    `release.load_release`); or what `pretrain` wrote with objective `release_mae`: its run
    folder, its `encoder/` folder or the registered version (`models:/NAME/VERSION`).
    Without a source the weights are random (kwargs = the MAE's constructor arguments), for
    tests and ablations of the architecture. include_global adds the flattened input
    (`global`), as the release's training does. `provenance()` records the source (and the
    pinned registry version, config hash and architecture, or the release artifact's name
    and content hash).
    """

    def __init__(self, input_shape: Sequence[int], *, source: Optional[str] = None, include_global: bool = True, **mae_kwargs):
        super().__init__(input_shape)
        if source:
            if mae_kwargs:
                raise TypeError(f"release_mae: {sorted(mae_kwargs)} cannot be given with a source (the artifact fixes the architecture)")
            if is_release_source(source):
                module, meta = load_release(source, kind="mae")
                self.provenance_info = {"source": str(source), **meta.get("identity", {})}
            else:
                module, self.provenance_info = load_pretrained_mae(str(source), self.input_shape)
        else:
            mae_kwargs.setdefault("in_channels", self.input_shape[0])
            module = ReleaseMAE(**mae_kwargs)
            self.provenance_info = None
        if self.input_shape[0] != module.in_channels:
            raise ValueError(f"release_mae: the MAE takes {module.in_channels}-channel inputs, the data have {self.input_shape[0]} channels")
        p = module.ips
        if len(self.input_shape) != 3 or self.input_shape[1] % p or self.input_shape[2] % p:
            raise ValueError(f"release_mae: input_patch_size {p} does not divide the data's {self.input_shape[1:]}")
        self.mae = module
        self.include_global = bool(include_global)

    def provenance(self) -> dict:
        return dict(self.provenance_info or {"source": None, "random_init": True})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"global": x.permute(0, 2, 3, 1).reshape(x.shape[0], 1, -1)} if self.include_global else {}
        out.update(self.mae.release_activations(x))
        return out
