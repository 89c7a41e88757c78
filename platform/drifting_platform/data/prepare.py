"""`data prepare`: an ImageFolder to SD-VAE posterior-moment shards, one shard at a time.

The release's preprocessing of ImageNet for the latent generators: each image is
centre-cropped to the resolution as ADM (guided-diffusion) does (halve with a box filter
while the short side is at least twice the target, bicubic-resize the short side to the
target, crop the centre), mapped to [-1, 1], and encoded by the VAE; what is kept is the
posterior's moments (mean and log-variance) of the image and of its horizontal flip, so a
training draw can pick a flip and sample the posterior afresh each time (`moments.py`).

Layout: `ROOT/<class>/**/<image>`; labels are the positions of the class folders in sorted
order (torchvision's ImageFolder). The items are shuffled once with a fixed seed before
they are cut into shards, so every shard (and every worker's split of the shards) holds all
classes.

One shard file `latents-{i:05d}-of-{k:05d}.parquet` (pyarrow, zstd) has columns
`moments` and `moments_flip` (fixed_size_list<float32>[2C*h*w], C order of [2C, h, w]),
`label` (int64) and `path` (the image relative to ROOT), and JSON schema metadata: `format`,
`kind` ("latent"), `shape` ([C, h, w], what a training draw has), `moments_shape`,
`num_classes`, `name`, `resolution`, `scaling_factor`, `vae` (the VAE's identity),
`shard_key` (a hash of the shard's items, the resolution and the VAE), `counts` (rows per
class) and `failed` (images that could not be read, with the error). A shard is written to
a temporary name and renamed, so one is either whole or absent; a rerun skips every shard
whose `shard_key` matches and redoes the rest, and the results are byte-identical.
`manifest.json` (written last) sums the shards: counts per class, class names, resolution,
VAE identity, failures.

This module has no Ray: `launch/prepare.py` spreads `encode_shard` over Ray Data actors.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from .. import storage

FORMAT = "drifting_platform.latent_moments/1"
SHARD_PREFIX = "latents"
MANIFEST = "manifest.json"
DEFAULT_SHARD_SIZE = 1024
DEFAULT_RESOLUTION = 256
SHUFFLE_SEED = 0
ON_ERROR = ("skip", "fail")
# torchvision's ImageFolder extensions
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

PathLike = Union[str, os.PathLike]


class PrepareError(ValueError):
    """A folder, image or output that `data prepare` cannot use; names it."""


class UnreadableImage(PrepareError):
    """An image file that PIL cannot decode (with --on-error fail)."""


# --------------------------------------------------------------------------- the folder


def list_image_folder(root: PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names in label order, [(path relative to root, label)]) of an ImageFolder.

    Class folders are the non-hidden sub-folders of `root`, sorted; images are the files
    with an image extension anywhere below them, sorted. Raises PrepareError naming the root
    when it is missing, has no class folders, or no images."""
    root = Path(root)
    if not root.is_dir():
        raise PrepareError(f"{root}: no such folder (expected ROOT/<class>/<image> files)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise PrepareError(f"{root}: no class folders (expected ROOT/<class>/<image> files)")
    items = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    items.append((os.path.relpath(os.path.join(dirpath, f), root), label))
    if not items:
        raise PrepareError(f"{root}: {len(classes)} class folder(s) but no images ({', '.join(IMAGE_EXTENSIONS)})")
    return classes, items


def shuffle_items(items: Sequence[tuple[str, int]], seed: int = SHUFFLE_SEED) -> list[tuple[str, int]]:
    """`items` in a fixed pseudo-random order (a function of the seed and the list)."""
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]


def plan_shards(n: int, shard_size: int) -> list[tuple[int, int]]:
    """[lo, hi) row ranges of ceil(n / shard_size) shards."""
    if n < 1 or shard_size < 1:
        raise PrepareError(f"plan_shards: need n >= 1 and shard_size >= 1, got {n}, {shard_size}")
    return [(lo, min(n, lo + shard_size)) for lo in range(0, n, shard_size)]


def shard_name(i: int, k: int) -> str:
    return f"{SHARD_PREFIX}-{i:05d}-of-{k:05d}.parquet"


def shard_key(items: Sequence[tuple[str, int]], resolution: int, vae_sha256: str) -> str:
    """What a finished shard must have been made from to be reused: its items (paths and
    labels, in order), the resolution, the VAE's files and this format."""
    h = hashlib.sha256(f"{FORMAT}\0{resolution}\0{vae_sha256}\0".encode())
    for path, label in items:
        h.update(f"{path}\0{label}\n".encode())
    return h.hexdigest()[:32]


def write_image_folder(images01, labels, out: PathLike, *, class_names: Optional[Sequence[str]] = None) -> Path:
    """Write images in [0, 1] `[N, C, H, W]` (C = 1 or 3) as an ImageFolder of RGB PNGs,
    `out/<class>/<i:06d>.png` (classes `class_000`, ... unless named): the miniature's stand-in
    for ImageNet's folder. Returns `out`."""
    from PIL import Image

    out = Path(out)
    x = np.asarray(images01, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) != len(y):
        raise PrepareError(f"write_image_folder: expected images [N, 1|3, H, W] and N labels, got {x.shape} and {y.shape}")
    k = int(y.max()) + 1 if len(y) else 0
    names = list(class_names) if class_names is not None else [f"class_{c:03d}" for c in range(k)]
    u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    for i, (img, c) in enumerate(zip(u8, y)):
        d = out / names[int(c)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:06d}.png")
    return out


# --------------------------------------------------------------------------- one image


def center_crop_arr(image, size: int) -> np.ndarray:
    """ADM's centre crop of a PIL image to `size` x `size`: uint8 [size, size, 3] RGB."""
    from PIL import Image

    img = image.convert("RGB")
    while min(img.size) >= 2 * size:  # box-filter halvings first (cheap, alias-free)
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    s = size / min(img.size)
    img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), resample=Image.BICUBIC)
    a = np.asarray(img)
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return np.ascontiguousarray(a[top : top + size, left : left + size])


def load_image(path: PathLike, size: int) -> np.ndarray:
    """The image at `path`, centre-cropped: uint8 [size, size, 3]. UnreadableImage names the
    file when PIL cannot decode it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return center_crop_arr(img, size)
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path}: cannot read the image (not an image format PIL knows)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated, corrupt, too large
        raise UnreadableImage(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from None


def to_model_space(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


# --------------------------------------------------------------------------- one shard


@dataclass
class ShardResult:
    """What encoding one shard produced: the table to write and its bookkeeping."""

    index: int
    table: object  # pyarrow.Table
    rows: int
    counts: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)


def encode_shard(
    vae,
    root: PathLike,
    items: Sequence[tuple[str, int]],
    *,
    index: int,
    num_shards: int,
    num_classes: int,
    resolution: int,
    name: str,
    on_error: str = "skip",
    batch_size: int = 32,
    encode: Optional[Callable] = None,
) -> ShardResult:
    """Read, crop and encode the images of one shard (and their flips): a `ShardResult`.

    on_error "skip" records an unreadable image in `failed` and goes on; "fail" raises
    UnreadableImage naming it. `encode` (images [-1, 1] -> moments) defaults to
    `vae.encode_moments`; the batches are fixed by `batch_size`, so a shard is the same
    whenever it is made."""
    from .vae import encode_moments, scaling_factor

    if on_error not in ON_ERROR:
        raise PrepareError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    enc = encode if encode is not None else (lambda x: encode_moments(vae, x))
    root = Path(root)
    good, failed = [], []
    for path, label in items:
        try:
            good.append((path, label, load_image(root / path, resolution)))
        except UnreadableImage as exc:
            if on_error == "fail":
                raise
            failed.append([path, str(exc).split(": ", 1)[-1]])
    moments, flips = [], []
    device = next(vae.parameters()).device
    for lo in range(0, len(good), batch_size):
        x = to_model_space(np.stack([g[2] for g in good[lo : lo + batch_size]])).to(device)
        moments.append(enc(x).cpu())
        flips.append(enc(torch.flip(x, dims=[3])).cpu())
    labels = np.array([g[1] for g in good], dtype=np.int64)
    ident = dict(getattr(vae, "identity", {}) or {})
    if moments:
        m, mf = torch.cat(moments).numpy(), torch.cat(flips).numpy()
    else:  # every image failed: an empty shard still records the failures
        c = int(vae.config.latent_channels)
        f = int(2 ** (len(vae.config.block_out_channels) - 1))
        m = mf = np.zeros((0, 2 * c, resolution // f, resolution // f), np.float32)
    counts = {str(int(c)): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
    meta = {
        "format": FORMAT,
        "kind": "latent",
        "shape": [m.shape[1] // 2, *m.shape[2:]],
        "moments_shape": list(m.shape[1:]),
        "num_classes": int(num_classes),
        "name": name,
        "resolution": int(resolution),
        "scaling_factor": float(scaling_factor(vae)),
        "vae": ident,
        "shard": [int(index), int(num_shards)],
        "shard_key": shard_key(items, resolution, ident.get("sha256", "")),
        "counts": counts,
        "failed": failed,
    }

    table = moments_table(m, mf, labels, [g[0] for g in good], meta)
    return ShardResult(int(index), table, len(good), counts, failed)


def moments_table(moments: np.ndarray, moments_flip: np.ndarray, labels: np.ndarray, paths: Sequence[str], meta: dict):
    """One shard's pyarrow table: the columns of the module doc, `meta` as JSON schema metadata."""
    import pyarrow as pa

    d = int(np.prod(moments.shape[1:]))

    def col(a: np.ndarray):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a, np.float32).reshape(-1), type=pa.float32()), d)

    table = pa.table({
        "moments": col(moments),
        "moments_flip": col(moments_flip),
        "label": pa.array(np.asarray(labels, np.int64), type=pa.int64()),
        "path": pa.array(list(paths), type=pa.string()),
    })
    return table.replace_schema_metadata({k.encode(): json.dumps(v, sort_keys=True).encode() for k, v in meta.items()})


# --------------------------------------------------------------------------- files


def _fs(out: PathLike):
    """(pyarrow filesystem or None for local, path on it) of an output folder."""
    if storage.is_s3(out):
        return storage.filesystem_and_path(out)
    return None, os.fspath(out)


def write_shard(table, out: PathLike, name: str) -> str:
    """Write `table` as `out/name` (local: a temporary name, then a rename; S3: one PUT,
    which appears whole). Returns the path written."""
    import pyarrow.parquet as pq

    fs, base = _fs(out)
    if fs is not None:
        key = f"{base.rstrip('/')}/{name}"
        try:
            pq.write_table(table, key, filesystem=fs, compression="zstd")
        except OSError as exc:
            raise OSError(f"{storage.s3_uri(key)}: cannot write the shard: {exc}") from None
        return storage.s3_uri(key)
    Path(base).mkdir(parents=True, exist_ok=True)
    path = Path(base) / name
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return str(path)


def read_shard_meta(path: str, filesystem=None) -> Optional[dict]:
    """The JSON schema metadata of a shard file (the footer only), or None when the file is
    absent or unreadable (a shard to redo)."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path, filesystem=filesystem)
    except Exception:  # noqa: BLE001 - absent, truncated, not Parquet: a shard to redo
        return None
    raw = schema.metadata or {}
    try:
        return {k.decode(): json.loads(v.decode()) for k, v in raw.items()}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def existing_shards(out: PathLike, keys: Sequence[str]) -> dict[int, dict]:
    """{shard index: metadata} of the shards under `out` that are finished for this plan
    (present, readable, and made from the same items, resolution and VAE: `keys[i]`)."""
    fs, base = _fs(out)
    done = {}
    k = len(keys)
    for i, key in enumerate(keys):
        p = f"{base.rstrip('/')}/{shard_name(i, k)}" if fs is not None else os.path.join(base, shard_name(i, k))
        if fs is None and not os.path.exists(p):
            continue
        meta = read_shard_meta(p, fs)
        if meta is not None and meta.get("format") == FORMAT and meta.get("shard_key") == key:
            done[i] = meta
    return done


def build_manifest(metas: Sequence[dict], *, classes: Sequence[str], root: PathLike, num_images: int, shard_size: int, seed: int) -> dict:
    """manifest.json's content from the metadata of all shards (in order)."""
    counts = np.zeros(len(classes), dtype=np.int64)
    failed = []
    for m in metas:
        for c, n in m["counts"].items():
            counts[int(c)] += int(n)
        failed.extend(m["failed"])
    first = metas[0]
    return {
        "format": FORMAT,
        "name": first["name"],
        "root": os.fspath(root),
        "resolution": first["resolution"],
        "shape": first["shape"],
        "moments_shape": first["moments_shape"],
        "scaling_factor": first["scaling_factor"],
        "vae": first["vae"],
        "num_classes": len(classes),
        "classes": list(classes),
        "images": int(num_images),
        "rows": int(counts.sum()),
        "counts": {str(i): int(n) for i, n in enumerate(counts)},
        "failed": failed,
        "shards": [shard_name(i, len(metas)) for i in range(len(metas))],
        "shard_size": int(shard_size),
        "shuffle_seed": int(seed),
    }


def write_manifest(manifest: dict, out: PathLike) -> str:
    """Write manifest.json under `out` (atomically on local disk)."""
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    fs, base = _fs(out)
    if fs is not None:
        key = f"{base.rstrip('/')}/{MANIFEST}"
        with fs.open_output_stream(key) as fh:
            fh.write(data)
        return storage.s3_uri(key)
    path = Path(base) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return str(path)


def read_manifest(out: PathLike) -> dict:
    """manifest.json of a prepared folder (local or s3://)."""
    fs, base = _fs(out)
    try:
        if fs is not None:
            with fs.open_input_stream(f"{base.rstrip('/')}/{MANIFEST}") as fh:
                return json.loads(fh.read().decode())
        return json.loads((Path(base) / MANIFEST).read_text())
    except (OSError, FileNotFoundError, json.JSONDecodeError) as exc:
        raise PrepareError(f"{os.fspath(out)}: no readable {MANIFEST} ({type(exc).__name__}); run `drifting-platform data prepare` first") from None


# --------------------------------------------------------------------------- the plan


@dataclass
class PreparePlan:
    """Everything one `data prepare` does, computed before any image is read."""

    root: str
    out: str
    vae: str
    resolution: int
    shard_size: int
    name: str
    on_error: str
    batch_size: int
    classes: list
    items: list  # shuffled (path, label)
    ranges: list  # [lo, hi) per shard
    keys: list  # shard_key per shard
    seed: int = SHUFFLE_SEED

    def shard_items(self, i: int) -> list[tuple[str, int]]:
        lo, hi = self.ranges[i]
        return self.items[lo:hi]

    @property
    def num_shards(self) -> int:
        return len(self.ranges)


def make_plan(root: PathLike, out: PathLike, *, vae: str, vae_sha256: str, resolution: int = DEFAULT_RESOLUTION,
              shard_size: int = DEFAULT_SHARD_SIZE, name: Optional[str] = None, on_error: str = "skip", batch_size: int = 32,
              seed: int = SHUFFLE_SEED) -> PreparePlan:
    """The shards of preparing ImageFolder `root` into `out` (PrepareError on bad input)."""
    for what, v in (("resolution", resolution), ("shard_size", shard_size), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise PrepareError(f"{what} must be a positive integer, got {v!r}")
    if on_error not in ON_ERROR:
        raise PrepareError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    classes, items = list_image_folder(root)
    items = shuffle_items(items, seed)
    ranges = plan_shards(len(items), shard_size)
    keys = [shard_key(items[lo:hi], resolution, vae_sha256) for lo, hi in ranges]
    return PreparePlan(os.fspath(root), os.fspath(out), os.fspath(vae), int(resolution), int(shard_size),
                       name or Path(root).resolve().name, on_error, int(batch_size), classes, items, ranges, keys, int(seed))


def run_shard(vae, plan: PreparePlan, i: int) -> dict:
    """Encode and write shard `i` of `plan`; returns its metadata (what the manifest sums)."""
    res = encode_shard(vae, plan.root, plan.shard_items(i), index=i, num_shards=plan.num_shards, num_classes=len(plan.classes),
                       resolution=plan.resolution, name=plan.name, on_error=plan.on_error, batch_size=plan.batch_size)
    write_shard(res.table, plan.out, shard_name(i, plan.num_shards))
    return {k.decode(): json.loads(v.decode()) for k, v in res.table.schema.metadata.items()}


def finish(plan: PreparePlan, metas: dict[int, dict]) -> dict:
    """Write manifest.json once every shard is done; returns the manifest."""
    missing = [i for i in range(plan.num_shards) if i not in metas]
    if missing:
        raise PrepareError(f"{plan.out}: shards {missing[:5]} are not done; rerun to finish them")
    manifest = build_manifest([metas[i] for i in range(plan.num_shards)], classes=plan.classes, root=plan.root,
                              num_images=len(plan.items), shard_size=plan.shard_size, seed=plan.seed)
    write_manifest(manifest, plan.out)
    return manifest
