"""The authors' released artifacts: read, check, convert and load them as PyTorch modules.

    module, meta = load_release("hf://mae_latent_256")          # the HF cache, offline too
    module, meta = load_release("path/to/artifact")             # ema_params.msgpack + metadata.json
    module, meta = load_release("runs/converted")               # `drifting-platform release convert`

A release artifact is a folder holding `ema_params.msgpack` (flax's msgpack serialisation of
the EMA parameter tree, bare or under a top-level "params" key) and `metadata.json` (`kind`
"gen" or "mae", `model_config` = the module's constructor arguments). `hf://NAME` is the
folder `models/{gen,mae}/jax/NAME` of the Hugging Face repo `Goodeat/drifting`, resolved
through huggingface_hub's cache (downloaded there when the user has network). A converted
folder holds `model.safetensors` (our modules' state dicts, no pickle) and `release.json`.

Every parameter of the release tree maps to one tensor of our modules (`*_param_map`):
flax Dense kernels [in, out] are transposed, conv kernels [kh, kw, in, out] permuted to
[out, in, kh, kw]; a parameter missing, extra or of the wrong shape is a `ReleaseError`
naming its path. This module imports neither Ray nor MLflow.

(Over 400 lines: the msgpack reader, both parameter maps and the loader check one format
together; split, each part would need the others' private details.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional

import msgpack
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .models.release_mae import ReleaseMAE
from .models.release_dit import ReleaseDiTGenerator

HF_REPO = "Goodeat/drifting"
HF_PREFIX = "hf://"
RELEASE_PARAMS = "ema_params.msgpack"
RELEASE_META = "metadata.json"
CONVERTED_WEIGHTS = "model.safetensors"
CONVERTED_META = "release.json"
CONVERTED_FORMAT = "drifting-release/1"
KINDS = ("gen", "mae")

# flax msgpack extension codes (flax.serialization)
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_SCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"


class ReleaseError(ValueError):
    """A release artifact that cannot be used; the message names the file or parameter path."""


def _one_line(exc: object, limit: int = 300) -> str:
    """An exception's text on one line (error messages here are one line each)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- msgpack


def _ndarray(data: bytes) -> np.ndarray:
    shape, dtype, buf = msgpack.unpackb(data, raw=False)
    if dtype == "bfloat16":  # numpy has no bfloat16: reinterpret the bits through torch
        bits = torch.from_numpy(np.frombuffer(buf, dtype=np.uint16).copy())
        return bits.view(torch.bfloat16).float().numpy().reshape(shape)
    return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)


def _ext_hook(code: int, data: bytes):
    if code == _EXT_NDARRAY:
        return _ndarray(data)
    if code == _EXT_SCALAR:
        shape, dtype, buf = msgpack.unpackb(data, raw=False)
        return np.frombuffer(buf, dtype=np.dtype(dtype))[0]
    if code == _EXT_COMPLEX:
        re, im = msgpack.unpackb(data, raw=False)
        return complex(re, im)
    return msgpack.ExtType(code, data)


def _unchunk(tree):
    """flax splits arrays over 1 GiB into chunks; put them back together."""
    if isinstance(tree, dict):
        if tree.get(_CHUNKED):
            chunks = [tree["chunks"][k] for k in sorted(tree["chunks"], key=int)]
            return np.concatenate([c.reshape(-1) for c in chunks]).reshape(tree["shape"])
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def read_msgpack(path: str | Path) -> dict:
    """The parameter tree of a flax msgpack file as nested dicts of numpy arrays."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not raw:
        raise ReleaseError(f"{path}: empty file, not a flax msgpack parameter file")
    try:
        tree = msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except msgpack.exceptions.ExtraData:
        raise ReleaseError(f"{path}: not a flax msgpack parameter file (its bytes do not form one msgpack value)") from None
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        if "incomplete input" in str(exc) or "exceeds max_" in str(exc):  # data, or a declared length, run past the end
            raise ReleaseError(f"{path}: truncated flax msgpack file (the data end early; {len(raw)} bytes read); download or copy it again") from None
        raise ReleaseError(f"{path}: not a flax msgpack parameter file ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(tree, dict) or not tree:
        raise ReleaseError(f"{path}: not a flax msgpack parameter file (top level is {type(tree).__name__}, not a parameter tree)")
    tree = _unchunk(tree)
    if set(tree) == {"params"} and isinstance(tree["params"], dict):
        tree = tree["params"]
    return tree


def flatten_tree(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{"a": {"b": x}} -> {"a/b": x}."""
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten_tree(v, key))
        else:
            out[key] = np.asarray(v)
    return out


# --------------------------------------------------------------------------- parameter maps

# how a flax leaf becomes a torch tensor
_DENSE, _CONV, _SAME = "dense", "conv", "same"


def _linear(out: dict, src: str, dst: str) -> None:
    out[f"{src}/kernel"] = (f"{dst}.weight", _DENSE)
    out[f"{src}/bias"] = (f"{dst}.bias", _SAME)


def _dense(src: str) -> str:
    return f"{src}/Dense_0"  # the release's TorchLinear wraps one flax Dense


def generator_param_map(g: ReleaseDiTGenerator) -> dict[str, tuple[str, str]]:
    """{release path: (state-dict key, transform)} for a `ReleaseDiTGenerator`."""
    c = g.config
    m: dict[str, tuple[str, str]] = {"Embed_0/embedding": ("class_embed.weight", _SAME), "RMSNorm_0/weight": ("cfg_norm.weight", _SAME)}
    for i in range(len(g.noise_embeds)):
        m[f"noise_embeds_{i}/embedding"] = (f"noise_embeds.{i}.weight", _SAME)
    _linear(m, _dense("TimestepEmbedder_0/TorchLinear_0"), "cfg_fc1")
    _linear(m, _dense("TimestepEmbedder_0/TorchLinear_1"), "cfg_fc2")
    d = "LightningDiT_0"
    _linear(m, _dense(f"{d}/TorchLinear_0"), "patch_embed")
    m[f"{d}/pos_embed"] = ("pos_embed", _SAME)
    if c["n_cls_tokens"]:
        _linear(m, _dense(f"{d}/TorchLinear_1"), "cls_proj")
        m[f"{d}/cls_embed"] = ("cls_embed", _SAME)
    for i in range(c["depth"]):
        b, t = f"{d}/blocks_{i}", f"blocks.{i}"
        if c["use_rmsnorm"]:
            m[f"{b}/RMSNorm_0/weight"] = (f"{t}.norm1.weight", _SAME)
            m[f"{b}/RMSNorm_1/weight"] = (f"{t}.norm2.weight", _SAME)
        _linear(m, _dense(f"{b}/Attention_0/TorchLinear_0"), f"{t}.attn.qkv")
        _linear(m, _dense(f"{b}/Attention_0/TorchLinear_1"), f"{t}.attn.proj")
        if c["use_qknorm"]:
            for n in ("q_norm", "k_norm"):
                if c["use_rmsnorm"]:
                    m[f"{b}/Attention_0/{n}/weight"] = (f"{t}.attn.{n}.weight", _SAME)
                else:
                    m[f"{b}/Attention_0/{n}/scale"] = (f"{t}.attn.{n}.weight", _SAME)
                    m[f"{b}/Attention_0/{n}/bias"] = (f"{t}.attn.{n}.bias", _SAME)
        if c["use_swiglu"]:
            for j, name in enumerate(("w1", "w3", "w2")):
                _linear(m, _dense(f"{b}/SwiGLUFFN_0/TorchLinear_{j}"), f"{t}.mlp.{name}")
        else:
            for j, name in enumerate(("fc1", "fc2")):
                _linear(m, _dense(f"{b}/StandardMLP_0/TorchLinear_{j}"), f"{t}.mlp.{name}")
        _linear(m, _dense(f"{b}/TorchLinear_0"), f"{t}.ada")
    f = f"{d}/FinalLayer_0"
    if c["use_rmsnorm"]:
        m[f"{f}/RMSNorm_0/weight"] = ("final_norm.weight", _SAME)
    _linear(m, _dense(f"{f}/TorchLinear_0"), "final_ada")
    _linear(m, _dense(f"{f}/TorchLinear_1"), "final")
    return m


def _gn_map(m: dict, src: str, dst: str) -> None:
    m[f"{src}/scale"] = (f"{dst}.weight", _SAME)
    m[f"{src}/bias"] = (f"{dst}.bias", _SAME)


def mae_param_map(mae: ReleaseMAE) -> dict[str, tuple[str, str]]:
    """{release path: (state-dict key, transform)} for a `ReleaseMAE`."""
    m: dict[str, tuple[str, str]] = {"encoder/conv1/kernel": ("conv1.weight", _CONV)}
    _gn_map(m, "encoder/gn1", "gn1")
    for i, stage in enumerate(mae.stages):
        _gn_map(m, f"encoder/layer{i + 1}_norm", f"stage_norms.{i}")
        for j, block in enumerate(stage):
            s, t = f"encoder/stages_{i}/layers_{j}", f"stages.{i}.{j}"
            for conv in ("conv1", "conv2") + (("proj_conv",) if block.proj_conv is not None else ()):
                m[f"{s}/{conv}/kernel"] = (f"{t}.{conv}.weight", _CONV)
            for gn in ("gn1", "gn2") + (("proj_gn",) if block.proj_gn is not None else ()):
                _gn_map(m, f"{s}/{gn}", f"{t}.{gn}")
    m["decoder/bridge/conv/kernel"] = ("bridge.conv.weight", _CONV)
    _gn_map(m, "decoder/bridge/gn", "bridge.gn")
    for up in ("up43", "up32", "up21", "up10"):
        _gn_map(m, f"decoder/{up}/concat_norm_fn", f"{up}.concat_norm")
        for part in ("proj", "refine"):
            m[f"decoder/{up}/{part}/conv/kernel"] = (f"{up}.{part}.conv.weight", _CONV)
            _gn_map(m, f"decoder/{up}/{part}/gn", f"{up}.{part}.gn")
    m["decoder/head/kernel"] = ("head.weight", _CONV)
    m["decoder/head/bias"] = ("head.bias", _SAME)
    _linear(m, "fc", "fc")
    return m


def _to_torch(arr: np.ndarray, how: str) -> torch.Tensor:
    t = torch.from_numpy(np.array(arr, dtype=np.float32))
    if how == _DENSE:
        return t.t().contiguous() if t.dim() == 2 else t
    if how == _CONV:
        return t.permute(3, 2, 0, 1).contiguous() if t.dim() == 4 else t
    return t


def state_dict_from_release(module: torch.nn.Module, flat: dict[str, np.ndarray], where: str) -> dict[str, torch.Tensor]:
    """Our state dict from the release's flat tree, every parameter checked by path."""
    pmap = generator_param_map(module) if isinstance(module, ReleaseDiTGenerator) else mae_param_map(module)
    missing = sorted(set(pmap) - set(flat))
    if missing:
        raise ReleaseError(f"{where}: parameter {missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + " for the model_config in metadata.json")
    extra = sorted(set(flat) - set(pmap))
    if extra:
        raise ReleaseError(f"{where}: unexpected parameter {extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "") + " for the model_config in metadata.json")
    own = module.state_dict()
    out = {}
    for src, (dst, how) in pmap.items():
        arr = np.asarray(flat[src])
        if arr.dtype.kind not in "fiub":
            raise ReleaseError(f"{where}: parameter {src} is not a numeric array (found {type(flat[src]).__name__} of dtype {arr.dtype})")
        t = _to_torch(arr, how)
        if tuple(t.shape) != tuple(own[dst].shape):
            want = tuple(own[dst].shape)
            if how == _DENSE:
                want = tuple(reversed(want))
            elif how == _CONV and len(want) == 4:
                want = (want[2], want[3], want[1], want[0])
            raise ReleaseError(f"{where}: parameter {src} has shape {tuple(np.shape(flat[src]))}, the model_config in metadata.json needs {want}")
        out[dst] = t
    return out


# --------------------------------------------------------------------------- building


# The constructor defaults of the release's DitGen and MAEResNetJAX: a model_config written
# without some key was built with these (the release's train.py writes them all).
RELEASE_GEN_DEFAULTS = dict(
    num_classes=1001, noise_classes=0, noise_coords=1, input_size=32, in_channels=3, n_cls_tokens=0, patch_size=2,
    hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0, out_channels=3, use_qknorm=False, use_swiglu=False,
    use_rope=False, use_rmsnorm=False, use_bf16=False, attn_fp32=True, use_remat=False,
)
RELEASE_MAE_DEFAULTS = dict(
    num_classes=1000, in_channels=3, base_channels=64, patch_size=4, dropout_prob=0.0, layers=(2, 2, 2, 2),
    use_bf16=False, input_patch_size=1,
)


def build_module(kind: str, model_config: dict, where: str) -> torch.nn.Module:
    """An (untrained) module of `kind` from the release's model_config."""
    try:
        if kind == "gen":
            if "cond_dim" not in model_config:  # the one argument the release's DitGen requires
                raise ReleaseError(f"{where}: model_config has no 'cond_dim'")
            # a key left out means the release's default, not ours (ours suit training here)
            cfg = {**RELEASE_GEN_DEFAULTS, **model_config}
            c, s = int(cfg.pop("in_channels")), int(cfg.pop("input_size"))
            return ReleaseDiTGenerator((c, s, s), int(cfg.pop("num_classes")), **cfg)
        if kind == "mae":
            return ReleaseMAE(**{**RELEASE_MAE_DEFAULTS, **model_config})
    except TypeError as exc:
        raise ReleaseError(f"{where}: model_config does not fit the release {kind} model ({_one_line(exc)})") from None
    except ValueError as exc:
        if isinstance(exc, ReleaseError):
            raise
        raise ReleaseError(f"{where}: model_config: {_one_line(exc)}") from None
    raise ReleaseError(f"{where}: kind {kind!r} is not one of {list(KINDS)}")


def _shape_template(kind: str, model_config: dict, where: str) -> torch.nn.Module:
    """The module on the meta device: parameter names and shapes to check against, without
    allocating or initialising weights (load_release builds the real one once)."""
    with torch.device("meta"):
        return build_module(kind, model_config, where)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path}: not valid JSON ({_one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise ReleaseError(f"{path}: expected a JSON object")
    return meta


def _check_meta(meta: dict, path: Path, kind: Optional[str]) -> str:
    k = meta.get("kind")
    if k not in KINDS:
        raise ReleaseError(f"{path}: 'kind' is {k!r}, expected one of {list(KINDS)}")
    if not isinstance(meta.get("model_config"), dict) or not meta["model_config"]:
        raise ReleaseError(f"{path}: no 'model_config' (the module's constructor arguments); the artifact cannot be rebuilt")
    if kind is not None and k != kind:
        raise ReleaseError(f"{path}: holds a {k!r} model, a {kind!r} model is needed here")
    return k


# --------------------------------------------------------------------------- locating


def hf_cache_hint(name: str) -> str:
    """The command that puts `hf://NAME` into the Hugging Face cache (run where there is network)."""
    return f"hf download {HF_REPO} --include 'models/*/jax/{name}/*'"


_HF_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment now (huggingface_hub itself
    reads it once, at import): $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_hf(name: str) -> Path:
    """The local folder of `hf://NAME`: from huggingface_hub's cache, else (unless
    HF_HUB_OFFLINE is set) downloaded into it. Only NAME's files are fetched."""
    name = name.strip().strip("/")
    if not _HF_NAME_RE.match(name) or ".." in name:
        raise ReleaseError(f"hf://{name}: expected hf://NAME with a release name such as latent_B_sota or mae_latent_256")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ReleaseError(f"hf://{name}: huggingface_hub is not installed (pip install huggingface_hub)") from None

    cache = hf_cache_dir()
    patterns = [f"models/{k}/jax/{name}/*" for k in KINDS]
    found = None
    try:
        found = _hf_folder(snapshot_download(HF_REPO, allow_patterns=patterns, local_files_only=True, cache_dir=str(cache)), name)
    except Exception:  # not cached (LocalEntryNotFoundError and relatives)
        found = None
    if found is None and not hf_offline():
        try:
            found = _hf_folder(snapshot_download(HF_REPO, allow_patterns=patterns, cache_dir=str(cache)), name)
        except Exception as exc:  # no network, unknown repo, ...
            raise ReleaseError(f"hf://{name}: not in the Hugging Face cache ({cache}) and it could not be downloaded ({type(exc).__name__}); on a machine with network run: {hf_cache_hint(name)}") from None
        if found is None:
            raise ReleaseError(f"hf://{name}: {HF_REPO} has no models/gen/jax/{name} or models/mae/jax/{name} (names: latent_L_sota, latent_B_sota, pixel_L_sota, pixel_B_sota, ablation, mae_latent_640, mae_pixel_640, mae_latent_256)")
    if found is None:
        raise ReleaseError(f"hf://{name}: not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; on a machine with network run: {hf_cache_hint(name)}")
    return found


def _hf_folder(root: str | Path, name: str) -> Optional[Path]:
    for k in KINDS:
        p = Path(root) / "models" / k / "jax" / name
        if (p / RELEASE_PARAMS).is_file() or (p / RELEASE_META).is_file():
            return p
    return None


def artifact_folder(path: str | Path) -> Path:
    """The folder holding the artifact files for a path (the release's `params_ema/` too)."""
    p = Path(path).expanduser()
    if p.is_file() and p.name in (RELEASE_PARAMS, RELEASE_META, CONVERTED_WEIGHTS, CONVERTED_META):
        p = p.parent
    if (p / "params_ema").is_dir():
        p = p / "params_ema"
    return p


def is_release_source(source: str | Path | None) -> bool:
    """True for hf://NAME and for folders holding a release or converted artifact."""
    if not source:
        return False
    if str(source).startswith(HF_PREFIX):
        return True
    p = artifact_folder(source)
    return (p / RELEASE_PARAMS).is_file() or (p / CONVERTED_META).is_file()


# --------------------------------------------------------------------------- loading


def read_release(path: str | Path, *, kind: Optional[str] = None) -> tuple[str, dict, dict[str, torch.Tensor], dict]:
    """(kind, model_config, our state dict, identity) of any artifact path, checked.

    identity: {"name", "sha256" (of the weights file the release published), "format"}.
    """
    src = str(path)
    if src.startswith(HF_PREFIX):
        folder, name = resolve_hf(src[len(HF_PREFIX):]), src
    else:
        folder = artifact_folder(path)
        name = None
        if not folder.exists():
            raise ReleaseError(f"{path}: no such file or folder")
        if not folder.is_dir():
            raise ReleaseError(f"{path}: a file; give the folder holding {RELEASE_PARAMS} and {RELEASE_META} (or {CONVERTED_WEIGHTS} and {CONVERTED_META}), or hf://NAME")
    if (folder / CONVERTED_META).is_file():
        meta = _read_json(folder / CONVERTED_META)
        if meta.get("format") != CONVERTED_FORMAT:
            raise ReleaseError(f"{folder / CONVERTED_META}: format {meta.get('format')!r} is not {CONVERTED_FORMAT!r}")
        k = _check_meta(meta, folder / CONVERTED_META, kind)
        module = _shape_template(k, meta["model_config"], str(folder / CONVERTED_META))
        weights = folder / CONVERTED_WEIGHTS
        try:
                state = load_file(str(weights))
        except FileNotFoundError:
            raise ReleaseError(f"{weights}: missing (a converted folder holds {CONVERTED_WEIGHTS} and {CONVERTED_META})") from None
        except Exception as exc:
            raise ReleaseError(f"{weights}: not a safetensors file ({type(exc).__name__}: {_one_line(exc)})") from None
        _check_state(module, state, str(weights))
        identity = dict(meta.get("identity") or {})
        identity.setdefault("name", name or str(folder))
        return k, dict(meta["model_config"]), state, identity
    if not (folder / RELEASE_META).is_file():
        raise ReleaseError(f"{folder}: no {RELEASE_META} (a release artifact holds {RELEASE_PARAMS} and {RELEASE_META}; a converted one {CONVERTED_WEIGHTS} and {CONVERTED_META})")
    meta = _read_json(folder / RELEASE_META)
    k = _check_meta(meta, folder / RELEASE_META, kind)
    params = folder / RELEASE_PARAMS
    if not params.is_file():
        raise ReleaseError(f"{params}: missing (the weights of the artifact)")
    module = _shape_template(k, meta["model_config"], str(folder / RELEASE_META))
    state = state_dict_from_release(module, flatten_tree(read_msgpack(params)), str(params))
    identity = {"name": name or str(folder.resolve()), "sha256": sha256_file(params), "format": "flax.msgpack"}
    for key in ("step", "ema_decay"):
        if key in meta:
            identity[key] = meta[key]
    return k, dict(meta["model_config"]), state, identity


def _check_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing:
        raise ReleaseError(f"{where}: parameter {missing[0]} is missing")
    if extra:
        raise ReleaseError(f"{where}: unexpected parameter {extra[0]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ReleaseError(f"{where}: parameter {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")


def load_release(path: str | Path, *, kind: Optional[str] = None) -> tuple[torch.nn.Module, dict]:
    """(module in eval mode, metadata) for a release artifact folder, `hf://NAME` or a
    converted folder. metadata: `kind`, `model_config`, and `identity` (name, sha256)."""
    k, model_config, state, identity = read_release(path, kind=kind)
    module = build_module(k, model_config, str(path))
    module.load_state_dict(state)
    return module.eval(), {"kind": k, "model_config": model_config, "identity": identity}


def parameter_count(state: dict[str, torch.Tensor]) -> int:
    return int(sum(v.numel() for v in state.values()))


def convert_release(path: str | Path, out: str | Path) -> Path:
    """Write `out/model.safetensors` + `out/release.json` for an artifact; nothing is written
    unless the whole artifact reads and checks (and a folder this call created is removed
    again if writing fails)."""
    k, model_config, state, identity = read_release(path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReleaseError(f"{out}: exists and is not a folder")
    created = not out.exists()
    tmp_w, tmp_m = out / (CONVERTED_WEIGHTS + ".tmp"), out / (CONVERTED_META + ".tmp")
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k_: v.contiguous() for k_, v in state.items()}, str(tmp_w))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_w, 0o666 & ~umask)  # safetensors creates 0600; a shared folder needs the usual mode
        meta = {"format": CONVERTED_FORMAT, "kind": k, "model_config": model_config, "identity": identity,
                "parameters": parameter_count(state), "converted_sha256": sha256_file(tmp_w)}
        tmp_m.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp_w, out / CONVERTED_WEIGHTS)
        os.replace(tmp_m, out / CONVERTED_META)
    except OSError as exc:
        for t in (tmp_w, tmp_m):
            t.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise ReleaseError(f"{out}: cannot write the converted artifact ({exc.strerror or _one_line(exc)})") from None
    return out
