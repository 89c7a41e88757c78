"""The encoder artifact format, and where an encoder source points to.

`drifting-platform pretrain` writes an artifact (`write_encoder_artifact`), the learned and
release_mae encoders load one (`resolve_source`, `read_meta`), and the tracking package
uploads, registers and downloads one. All of them take the format from here:

    <out>/encoder/encoder.json   what the weights are: {"format": "drifting-encoder/1", "name",
                                 "objective", "backbone" (ResNet spec) or the network's own
                                 architecture keys (release_mae: "model_config", "widths"),
                                 "input_shape", "mask_channel", "finetuned", "data",
                                 "config_hash", ...}
    <out>/encoder/weights.pt     the state dict (loads with weights_only=True)
    <dir>/registry.json          only in a folder downloaded from the MLflow registry:
                                 {"source": the pinned version it holds, "artifact": its URI}

A source is a local artifact folder (or its encoder.json), or a registry URI:
`models:/NAME/VERSION`, `models:/NAME/latest`, `models:/NAME@ALIAS` or `runs:/RUN/PATH`.
Registry URIs are resolved by a function registered for their prefix
(`register_source_resolver`); importing `drifting_platform.tracking` registers the MLflow
ones. So this module imports neither MLflow nor (until it writes weights) torch: the
tracking package imports it and stays cheap to import.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    import torch

ENCODER_DIR = "encoder"  # the artifact folder inside a pretrain run directory
ENCODER_FORMAT = "drifting-encoder/1"
FORMAT_FAMILY = "drifting-encoder/"  # read_meta accepts every version of the format
META_FILE = "encoder.json"
WEIGHTS_FILE = "weights.pt"
REGISTRY_FILE = "registry.json"

#: the registry URI schemes sources may use (known even before a resolver is registered)
REGISTRY_PREFIXES = ("models:/", "runs:/")

_MODEL_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))$")

#: scheme prefix -> fn(source) -> local artifact folder; see register_source_resolver
_RESOLVERS: dict[str, Callable[[str], Path]] = {}


# --------------------------------------------------------------------------- models:/ URIs


class ModelURI(NamedTuple):
    """A parsed `models:/` URI. `version` is the number of `models:/NAME/N`, `alias` the
    name of `models:/NAME@ALIAS`; both are None for `models:/NAME/latest`."""

    name: str
    version: Optional[int] = None
    alias: Optional[str] = None

    @property
    def latest(self) -> bool:
        return self.version is None and self.alias is None


def parse_model_uri(uri: str) -> ModelURI:
    """`models:/NAME/VERSION` -> ModelURI(NAME, VERSION), `models:/NAME@ALIAS` ->
    ModelURI(NAME, alias=ALIAS), `models:/NAME/latest` -> ModelURI(NAME). ValueError for
    anything else (a version that is neither a number nor `latest` included)."""
    m = _MODEL_URI_RE.match(str(uri))
    if not m:
        raise ValueError(f"{uri}: expected models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS")
    name, version, alias = m.group("name"), m.group("version"), m.group("alias")
    if alias:
        return ModelURI(name, alias=alias)
    if version == "latest":
        return ModelURI(name)
    if not version.isdigit():
        raise ValueError(f"{uri}: version must be a number, 'latest' or @alias")
    return ModelURI(name, int(version))


def model_uri(name: str, version: int) -> str:
    """The pinned registry URI `models:/NAME/VERSION`."""
    return f"models:/{name}/{int(version)}"


# --------------------------------------------------------------------------- sources


def register_source_resolver(prefix: str, fn: Callable[[str], Path]) -> None:
    """Resolve sources starting with `prefix` (e.g. "models:/") with `fn(source) -> Path`, a
    local artifact folder. Registering a prefix again replaces its resolver."""
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"source resolver prefix must be a non-empty string, got {prefix!r}")
    if not callable(fn):
        raise TypeError(f"source resolver for {prefix!r}: {fn!r} is not callable")
    _RESOLVERS[prefix] = fn


def is_registry_uri(source: Any) -> bool:
    """True for a source that names a registry entry rather than a local folder."""
    return isinstance(source, str) and source.startswith(REGISTRY_PREFIXES + tuple(_RESOLVERS))


def resolve_source(source: str) -> Path:
    """A local directory holding encoder.json and weights.pt for `source`: a registry URI
    through its resolver, a local folder (or its encoder.json) as it is."""
    if not source:
        raise ValueError("learned encoder: encoder.source is required (models:/NAME/VERSION or a local directory)")
    if is_registry_uri(source):
        prefix = max((p for p in _RESOLVERS if source.startswith(p)), key=len, default=None)
        if prefix is None:
            raise RuntimeError(
                f"encoder source {source}: no resolver for registry URIs in this process; "
                "`import drifting_platform.tracking` before building the encoder (it registers "
                "the MLflow registry's models:/ and runs:/ resolvers)")
        return Path(_RESOLVERS[prefix](source))
    path = Path(source).expanduser()
    if path.is_file() and path.name == META_FILE:
        path = path.parent
    if not (path / META_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"learned encoder: {source}: expected a directory with {META_FILE} and {WEIGHTS_FILE} (written by `drifting-platform pretrain`)")
    return path


def read_meta(path: Union[str, Path]) -> dict:
    """The encoder.json of artifact folder `path` (ValueError when it is not of this format)."""
    meta = json.loads((Path(path) / META_FILE).read_text())
    if not str(meta.get("format", "")).startswith(FORMAT_FAMILY):
        raise ValueError(f"{path}/{META_FILE}: not a drifting-platform encoder (format {meta.get('format')!r})")
    return meta


def pinned_source(path: Union[str, Path]) -> str:
    """The exact version an artifact folder holds: the registry version its registry.json
    records (a downloaded folder), else the folder itself."""
    reg = Path(path) / REGISTRY_FILE
    return json.loads(reg.read_text())["source"] if reg.is_file() else str(Path(path).resolve())


def write_registry_record(path: Union[str, Path], *, source: str, artifact: str) -> Path:
    """Record in a downloaded artifact folder which registry version (`source`, pinned) and
    which artifact URI it came from; `pinned_source` reads it back."""
    out = Path(path) / REGISTRY_FILE
    out.write_text(json.dumps({"source": source, "artifact": artifact}) + "\n")
    return out


def artifact_folder(path: Union[str, Path]) -> Optional[Path]:
    """The `encoder/` subfolder of `path` when it holds encoder.json (a pretrain run
    directory, a downloaded run artifact), else `path` itself when it does, else None."""
    path = Path(path)
    for cand in (path / ENCODER_DIR, path):
        if (cand / META_FILE).is_file():
            return cand
    return None


# --------------------------------------------------------------------------- writing


def write_encoder_artifact(
    out: Union[str, Path],
    module: "torch.nn.Module",
    *,
    name: str,
    objective: str,
    input_shape: Sequence[int],
    mask_channel: bool,
    finetuned: bool,
    data: Mapping[str, Any],
    config_hash: str,
    arch: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """out/encoder/{encoder.json, weights.pt}, written atomically (a directory rename).

    module: the network whose state dict is kept; arch: what encoder.json records about its
    architecture (default {"backbone": module.spec}); data: the data set it was trained on
    ({"name", "size"}); extra: further keys (e.g. probe_accuracy)."""
    import torch  # here only: reading the format must not import torch

    out = Path(out)
    final = out / ENCODER_DIR
    tmp = out / (ENCODER_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp / WEIGHTS_FILE)
    meta = {
        "format": ENCODER_FORMAT,
        "name": name,
        "objective": objective,
        **(dict(arch) if arch is not None else {"backbone": dict(module.spec)}),
        "input_shape": [int(s) for s in input_shape],
        "mask_channel": bool(mask_channel),
        "finetuned": bool(finetuned),
        "data": dict(data),
        "config_hash": config_hash,
        **(extra or {}),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
