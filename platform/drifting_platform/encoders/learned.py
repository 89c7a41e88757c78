"""Pre-trained (learned) encoders, loaded frozen from a registry URI or a local directory.

    encoder: {name: mae, source: "models:/mae-digits32-w32/1"}      # MLflow model registry
    encoder: {name: simclr, source: runs/enc-simclr/encoder}         # a local artifact dir

A source is what `pretrain_loop` writes (`encoder.json` + `weights.pt`, the format of
`encoder_artifact.py`). Registry URIs (`models:/NAME/VERSION`, `models:/NAME/latest`,
`models:/NAME@ALIAS`, `runs:/...`) are resolved by the resolvers `drifting_platform.tracking`
registers when it is imported, so this module never imports MLflow. The name (`simclr`,
`moco`, `mae`, or `learned` for any; `config.LEARNED_ENCODERS`) must match the artifact's
objective: a sweep row labelled "mae" cannot silently load a SimCLR encoder.

Features are those of the core interface: the multi-scale sets of every stage
("s1.loc", "s1.mean", ..., "s3.p4_std") and, with include_input, the input itself ("flat").
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..config import LEARNED_ENCODERS
from ..encoder_artifact import WEIGHTS_FILE, pinned_source, read_meta, resolve_source
from .backbone import ResNetBackbone
from .base import Encoder, register_encoder
from .multiscale import multiscale_features


class LearnedEncoder(Encoder):
    """A frozen pre-trained ResNet backbone (`encoders/backbone.py`, trained by `pretrain/`)
    giving multi-scale features.

    input_shape: (C, H, W) of the generator's samples; it must equal the shape the encoder
    was trained on. stages: which stages' maps to use (1-based; default all).
    """

    kind = "learned"

    def __init__(self, input_shape: Sequence[int], *, source: str, include_input: bool = True, stages: Optional[Sequence[int]] = None):
        super().__init__(input_shape)
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
        state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
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


for _kind in LEARNED_ENCODERS:
    _named(_kind)
