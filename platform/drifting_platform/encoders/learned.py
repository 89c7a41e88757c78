"""Pre-trained (learned) encoders, loaded frozen from a registry URI or a local directory.

    encoder: {name: mae, source: "models:/mae-digits32-w32/1"}      # MLflow model registry
    encoder: {name: simclr, source: runs/enc-simclr/encoder}         # a local artifact dir

A source is what `pretrain_loop` writes (`encoder.json` + `weights.pt`). Registry URIs
(`models:/NAME/VERSION`, `models:/NAME/latest`, `models:/NAME@ALIAS`, `runs:/...`) are
resolved by `drifting_platform.tracking`, imported only when such a URI is given, so this
module itself never imports MLflow. The name (`simclr`, `moco`, `mae`, or `learned` for
any) must match the artifact's objective: a sweep row labelled "mae" cannot silently load
a SimCLR encoder.

Features are those of the core interface: the multi-scale sets of every stage
("s1.loc", "s1.mean", ..., "s3.p4_std") and, with include_input, the input itself ("flat").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from .base import Encoder, register_encoder
from .multiscale import multiscale_features

LEARNED_NAMES = ("learned", "simclr", "moco", "mae")


def is_registry_uri(source: str) -> bool:
    return isinstance(source, str) and (source.startswith("models:/") or source.startswith("runs:/"))


def resolve_source(source: str) -> Path:
    """A local directory holding encoder.json and weights.pt for `source`."""
    if not source:
        raise ValueError("learned encoder: encoder.source is required (models:/NAME/VERSION or a local directory)")
    if is_registry_uri(source):
        from ..tracking import download_encoder  # MLflow only when a registry URI is asked for

        return Path(download_encoder(source))
    path = Path(source).expanduser()
    if path.is_file() and path.name == "encoder.json":
        path = path.parent
    if not (path / "encoder.json").is_file() or not (path / "weights.pt").is_file():
        raise FileNotFoundError(f"learned encoder: {source}: expected a directory with encoder.json and weights.pt (written by `drifting-platform pretrain`)")
    return path


def pinned_source(path: Path) -> str:
    """The exact version an artifact folder holds: the registry version `tracking.download_encoder`
    recorded in registry.json, else the folder itself."""
    reg = Path(path) / "registry.json"
    return json.loads(reg.read_text())["source"] if reg.is_file() else str(Path(path).resolve())


def read_meta(path: Path) -> dict:
    meta = json.loads((Path(path) / "encoder.json").read_text())
    if not str(meta.get("format", "")).startswith("drifting-encoder/"):
        raise ValueError(f"{path}/encoder.json: not a drifting-platform encoder (format {meta.get('format')!r})")
    return meta


class LearnedEncoder(Encoder):
    """A frozen pre-trained ResNet backbone (see `pretrain/`) giving multi-scale features.

    input_shape: (C, H, W) of the generator's samples; it must equal the shape the encoder
    was trained on. stages: which stages' maps to use (1-based; default all).
    """

    kind = "learned"

    def __init__(self, input_shape: Sequence[int], *, source: str, include_input: bool = True, stages: Optional[Sequence[int]] = None):
        super().__init__(input_shape)
        from ..pretrain.backbone import ResNetBackbone

        path = resolve_source(source)
        meta = read_meta(path)
        if (self.kind != "learned" or "backbone" not in meta) and meta["objective"] != self.kind:
            alt = " (or learned)" if "backbone" in meta else ""  # the release MAE is not a ResNetBackbone
            raise ValueError(f"encoder {self.kind!r}: {source} holds a {meta['objective']!r} encoder; use encoder.name: {meta['objective']}{alt}")
        trained = tuple(meta["input_shape"])
        if trained != self.input_shape:
            raise ValueError(f"encoder {self.kind!r}: {source} was trained on inputs {trained}, the data here are {self.input_shape} (pre-train on the same data.size)")
        self.source, self.meta, self.include_input = str(source), meta, bool(include_input)
        self.pinned_source = pinned_source(path)
        self.mask_channel = bool(meta.get("mask_channel", False))
        self.backbone = ResNetBackbone(**meta["backbone"])
        state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        self.backbone.load_state_dict(state)
        n = len(meta["backbone"]["widths"])
        self.stages = tuple(int(s) for s in stages) if stages else tuple(range(1, n + 1))
        bad = [s for s in self.stages if not 1 <= s <= n]
        if bad:
            raise ValueError(f"encoder {self.kind!r}: stages {bad} out of range 1..{n}")

    def provenance(self) -> dict:
        """What a run records about its encoder: the pinned source and the artifact's identity."""
        return {
            "source": self.source, "pinned": self.pinned_source, "objective": self.meta.get("objective"),
            "config_hash": self.meta.get("config_hash"), "widths": self.meta["backbone"].get("widths"),
            "finetuned": self.meta.get("finetuned", False),
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"flat": x.reshape(x.shape[0], 1, -1)} if self.include_input else {}
        h = x
        if self.mask_channel:  # MAE backbones take an extra "masked" channel: nothing is masked
            h = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
        maps = self.backbone(h)
        for i in self.stages:
            out.update(multiscale_features(maps[i - 1], f"s{i}"))
        return out


def _named(kind: str) -> type[LearnedEncoder]:
    cls = type(f"{kind.capitalize()}Encoder" if kind != "moco" else "MoCoEncoder", (LearnedEncoder,), {"kind": kind, "__doc__": f"A frozen {kind} encoder (see LearnedEncoder)."})
    return register_encoder(kind)(cls)


for _kind in LEARNED_NAMES:
    _named(_kind)
