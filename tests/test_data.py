"""Data sets, Parquet shards and the class-grouped sampler (docs/internals.md, `data/`)."""

import os
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from drifting_platform.data import (
    DATASETS,
    TOY_DATASETS,
    ClassGroupedSampler,
    DataNotFoundError,
    Dataset,
    build_dataset,
    export,
    make_synthetic_latents,
    read_shards,
    write_shards,
    toy_mode_centers,
)
from drifting_platform.data.toy import MODE_STD


def assert_same_dataset(a: Dataset, b: Dataset) -> None:
    assert (a.kind, a.name, a.shape, a.num_classes) == (b.kind, b.name, b.shape, b.num_classes)
    assert a.x.dtype == b.x.dtype == torch.float32 and a.y.dtype == b.y.dtype == torch.int64
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


# --------------------------------------------------------------------------- toy sets


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_set_shape_finite_and_seeded(name):
    a = build_dataset(name, n=2000, seed=0)
    assert a.kind == "toy" and a.name == name and a.shape == (2,) and a.num_classes == 1
    assert a.x.shape == (2000, 2) and a.x.dtype == torch.float32 and torch.isfinite(a.x).all()
    assert torch.equal(a.y, torch.zeros(2000, dtype=torch.int64))
    assert a.x.abs().max() < 3.5  # one scale for all sets
    assert torch.equal(a.x, build_dataset(name, n=2000, seed=0).x)
    assert not torch.equal(a.x, build_dataset(name, n=2000, seed=1).x)
    out = a.to_output(a.x)  # 2-D data: output space is data coordinates
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and np.array_equal(out, a.x.numpy())
    assert torch.equal(a.from_output(out), a.x)
    assert len(build_dataset(name)) == 10000  # default n


@pytest.mark.parametrize("name,k", [("8gaussians", 8), ("25gaussians", 25)])
def test_gaussian_mixture_points_sit_on_their_modes(name, k):
    centers = toy_mode_centers(name)
    assert centers.shape == (k, 2)
    x = build_dataset(name, n=8000, seed=0).x.numpy()
    d = np.linalg.norm(x[:, None, :] - centers[None], axis=-1)  # [N, K]
    assert d.min(1).max() < 6 * MODE_STD  # every point belongs to a mode
    share = np.bincount(d.argmin(1), minlength=k) / len(x)
    assert share.min() > 0.5 / k and share.max() < 1.5 / k  # modes equally weighted
    spacing = np.linalg.norm(centers[:, None] - centers[None], axis=-1)[~np.eye(k, dtype=bool)].min()
    assert spacing >= 15 * MODE_STD  # modes are unambiguous


def test_mode_centers_geometry():
    c8 = toy_mode_centers("8gaussians")
    assert np.allclose(np.linalg.norm(c8, axis=1), 2.0)
    assert sorted(map(tuple, toy_mode_centers("25gaussians").tolist())) == [(i, j) for i in range(-2, 3) for j in range(-2, 3)]
    for name in ("checkerboard", "swissroll", "moons", "rings", "digits", "nope"):
        assert toy_mode_centers(name) is None


def test_checkerboard_and_rings_structure():
    x = build_dataset("checkerboard", n=4000).x.numpy()
    cell = np.floor(x + 2.0).astype(int)  # [N, 2] in 0..3
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    assert len(np.unique(cell[:, 0] * 4 + cell[:, 1])) == 8
    r = np.linalg.norm(build_dataset("rings", n=4000).x.numpy(), axis=1)
    assert np.abs(r[:, None] - np.array([0.5, 1.0, 1.5, 2.0])).min(1).max() < 0.2


# --------------------------------------------------------------------------- digits


@pytest.mark.parametrize("size", [None, 16, 32])
def test_digits_shapes_range_classes(size):
    from sklearn.datasets import load_digits

    ds = build_dataset("digits", size=size)
    side = size or 8
    assert ds.kind == "image" and ds.name == "digits" and ds.num_classes == 10
    assert ds.x.shape == (1797, 1, side, side) and ds.shape == (1, side, side)
    assert ds.x.min() >= -1 and ds.x.max() <= 1 and ds.x.min() == -1 and ds.x.max() > 0.9
    sk = load_digits()
    assert torch.equal(ds.y, torch.from_numpy(sk.target.astype(np.int64)))
    out = ds.to_output(ds.x)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    if size is None:
        np.testing.assert_allclose(out[:, 0], sk.images / 16.0, atol=1e-6)
    else:  # upsampling keeps each image's mean ink
        np.testing.assert_allclose(out.mean((1, 2, 3)), (sk.images / 16.0).mean((1, 2)), atol=0.02)
    torch.testing.assert_close(ds.from_output(out), ds.x)


def test_digits_are_read_without_importing_sklearn():
    """The digits come from scikit-learn's bundled CSV, read directly: identical arrays, and
    a training run does not pay scikit-learn's import before its first step."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from drifting_platform.data.images import digits_images_and_labels

    images, target = digits_images_and_labels()
    sk = load_digits()
    assert images.dtype == sk.images.dtype and target.dtype == sk.target.dtype
    np.testing.assert_array_equal(images, sk.images)
    np.testing.assert_array_equal(target, sk.target)
    code = "import sys; from drifting_platform.data import build_dataset; build_dataset('digits'); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_image_to_output_clamps_and_limit():
    ds = build_dataset("digits", limit=50)
    assert len(ds) == 50 and ds.x.shape == (50, 1, 8, 8)
    out = ds.to_output(torch.tensor([[[[-3.0, 0.0], [1.0, 7.0]]]]))
    assert out.tolist() == [[[[0.0, 0.5], [1.0, 1.0]]]]


# --------------------------------------------------------------------------- torchvision sets


def _write_idx(path, array: np.ndarray) -> None:
    """An uncompressed idx (SN3 "Pascal Vincent") file of uint8: magic 0x0000 08 <ndim>, big-endian dims."""
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 | array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def _fake_mnist(root, folder="MNIST", n=12):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return images, labels


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_set_reads_local_idx_files(tmp_path, name, folder):
    images, labels = _fake_mnist(tmp_path, folder)
    ds = build_dataset(name, root=tmp_path)
    assert ds.kind == "image" and ds.name == name and ds.num_classes == 10 and ds.shape == (1, 28, 28)
    np.testing.assert_allclose(ds.to_output(ds.x)[:, 0], images / 255.0, atol=1e-6)
    assert ds.y.tolist() == labels.tolist()
    small = build_dataset(name, root=str(tmp_path), size=16, limit=5)
    assert small.x.shape == (5, 1, 16, 16) and small.shape == (1, 16, 16)
    assert small.x.min() >= -1 and small.x.max() <= 1 and small.y.tolist() == labels[:5].tolist()


@pytest.mark.parametrize(
    "name,expected",
    [
        ("mnist", ["MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte", "MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"]),
        ("fashion_mnist", ["FashionMNIST/raw/train-images-idx3-ubyte", "FashionMNIST/raw/t10k-labels-idx1-ubyte"]),
        ("cifar10", [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"]),
    ],
)
def test_missing_torchvision_files_name_what_is_expected(tmp_path, name, expected):
    with pytest.raises(DataNotFoundError) as info:
        build_dataset(name, root=tmp_path)  # an empty directory: torchvision itself finds nothing
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    assert name in msg and str(tmp_path) in msg
    for rel in expected:
        assert os.path.join(str(tmp_path), *rel.split("/")) in msg
    with pytest.raises(DataNotFoundError, match="not a directory"):
        build_dataset(name, root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="root"):
        build_dataset(name)


def test_present_but_corrupt_torchvision_files_are_reported(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / f).write_bytes(b"not a pickle")  # torchvision's checksums reject these
    with pytest.raises(DataNotFoundError, match="torchvision rejected them"):
        build_dataset("cifar10", root=tmp_path)


# --------------------------------------------------------------------------- shards


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_dataset("digits", size=16),
        lambda: build_dataset("moons", n=1000, seed=3),
        lambda: make_synthetic_latents(300, shape=(4, 8, 8), num_classes=4, seed=1),
    ],
    ids=["digits", "moons", "latents"],
)
def test_shards_round_trip(tmp_path, make):
    ds = make()
    files = write_shards(ds, tmp_path / "s", shard_size=256)
    assert len(files) == -(-len(ds) // 256) and all(os.path.isfile(f) for f in files)
    back = read_shards(tmp_path / "s")
    assert_same_dataset(back, ds)
    assert_same_dataset(read_shards(str(tmp_path / "s" / "*.parquet")), ds)  # glob
    assert_same_dataset(read_shards(files), ds)  # list
    assert_same_dataset(build_dataset("shards", path=str(tmp_path / "s")), ds)
    first = read_shards(files[0])  # single file
    assert len(first) == min(256, len(ds)) and torch.equal(first.x, ds.x[:256])
    schema = pq.read_schema(files[0])
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["kind"] == f'"{ds.kind}"' and meta["shape"] == str(list(ds.shape)) and meta["num_classes"] == str(ds.num_classes)
    assert ("value_range" in meta) == (ds.kind == "image")
    assert schema.field("label").type == pa.int64()


def test_shards_rewrite_replaces_stale_files_and_pyarrow_filesystem(tmp_path):
    from pyarrow import fs as pafs

    ds = build_dataset("8gaussians", n=500)
    write_shards(ds, tmp_path, shard_size=100)
    files = write_shards(ds, tmp_path, shard_size=300)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in files) and len(files) == 2
    local = pafs.LocalFileSystem()
    assert_same_dataset(read_shards(str(tmp_path), filesystem=local), ds)
    assert_same_dataset(read_shards(str(tmp_path / "shard-*.parquet"), filesystem=local), ds)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_shards(str(tmp_path / "nowhere"), filesystem=local)


def test_export_builds_and_writes(tmp_path):
    files = export("8gaussians", tmp_path / "e", n=100, seed=4, shard_size=64, prefix="toy")
    assert [os.path.basename(f) for f in files] == ["toy-00000-of-00002.parquet", "toy-00001-of-00002.parquet"]
    assert_same_dataset(read_shards(tmp_path / "e"), build_dataset("8gaussians", n=100, seed=4))


def test_corrupt_or_missing_shards_name_the_file(tmp_path):
    files = write_shards(make_synthetic_latents(64, num_classes=4), tmp_path, shard_size=32)
    data = open(files[1], "rb").read()
    with open(files[1], "wb") as f:
        f.write(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=os.path.basename(files[1])):
        read_shards(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_shards(tmp_path / "missing.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .parquet shards"):
        read_shards(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="match"):
        read_shards(str(tmp_path / "nothing-*.parquet"))
    alien = tmp_path / "alien.parquet"
    pq.write_table(pa.table({"x": [1.0], "label": [0]}), alien)  # no shape metadata
    with pytest.raises(ValueError, match="alien.parquet.*shape"):
        read_shards(alien)


def test_shards_in_other_layouts_load(tmp_path):
    """Binary float32 rows and images stored in [0, 1] (shards written by another tool)."""
    x01 = np.random.default_rng(0).uniform(size=(6, 1, 2, 2)).astype(np.float32)
    meta = {b"shape": b"[1, 2, 2]", b"kind": b'"image"', b"num_classes": b"3", b"name": b'"ext"', b"value_range": b"[0, 1]"}
    table = pa.table({"x": pa.array([r.tobytes() for r in x01.reshape(6, -1).astype("<f4")], pa.binary()), "label": pa.array([0, 1, 2, 0, 1, 2], pa.int64())})
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "ext.parquet")
    ds = read_shards(tmp_path / "ext.parquet")
    assert ds.kind == "image" and ds.num_classes == 3 and ds.shape == (1, 2, 2) and ds.name == "ext"
    np.testing.assert_allclose(ds.to_output(ds.x), x01, atol=1e-6)
    resized = build_dataset("shards", path=tmp_path / "ext.parquet", size=4)
    assert resized.shape == (1, 4, 4) and resized.x.shape == (6, 1, 4, 4)


# --------------------------------------------------------------------------- build_dataset


def test_build_dataset_rejects_unknown_names_and_stray_options(tmp_path):
    assert {"8gaussians", "25gaussians", "checkerboard", "swissroll", "moons", "rings", "digits", "mnist", "fashion_mnist", "cifar10", "shards"} <= set(DATASETS)
    with pytest.raises(ValueError, match="8gaussians.*digits.*shards"):
        build_dataset("imagenet")
    with pytest.raises(ValueError, match="size"):
        build_dataset("moons", size=16)
    with pytest.raises(ValueError, match="path"):
        build_dataset("shards")
    with pytest.raises(ValueError, match="limit"):
        build_dataset("digits", limit=0)
    lat = build_dataset("synthetic_latents", n=40, limit=10)
    assert lat.kind == "latent" and lat.x.shape == (10, 4, 8, 8)
    assert np.array_equal(lat.to_output(lat.x), lat.x.numpy())  # latents: output space = as stored


def test_synthetic_latents_are_class_structured():
    ds = make_synthetic_latents(400, shape=(4, 8, 8), num_classes=4, seed=0)
    assert ds.kind == "latent" and ds.shape == (4, 8, 8) and ds.num_classes == 4
    assert torch.bincount(ds.y).tolist() == [100] * 4
    assert_same_dataset(ds, make_synthetic_latents(400, shape=(4, 8, 8), num_classes=4, seed=0))
    means = torch.stack([ds.x[ds.y == c].mean(0) for c in range(4)]).flatten(1)
    within = torch.stack([(ds.x[ds.y == c] - means[c].view(4, 8, 8)).std() for c in range(4)]).mean()
    assert torch.cdist(means, means)[~torch.eye(4, dtype=bool)].min() > 5 * within


# --------------------------------------------------------------------------- sampler


def _labels():
    return torch.arange(200) % 10  # 10 classes of 20


def test_sampler_group_structure():
    y = _labels()
    s = ClassGroupedSampler(y, 10, n_classes=4, n_pos=8, n_unc=5, seed=0)
    for _ in range(20):
        b = s.sample()
        assert b.classes.shape == (4,) and b.pos_idx.shape == (4, 8) and b.unc_idx.shape == (5,)
        assert all(t.dtype == torch.int64 for t in (b.classes, b.pos_idx, b.unc_idx))
        assert len(set(b.classes.tolist())) == 4  # distinct classes per step
        assert torch.equal(y[b.pos_idx], b.classes[:, None].expand(4, 8))  # each row has its class
        assert all(len(set(row.tolist())) == 8 for row in b.pos_idx)  # without replacement (20 >= 8)
        assert b.unc_idx.min() >= 0 and b.unc_idx.max() < len(y)
    seen = torch.cat([s.sample().classes for _ in range(50)])
    assert set(seen.tolist()) == set(range(10))


def test_sampler_small_classes_unconditional_and_missing_classes():
    y = torch.tensor([0] * 3 + [2] * 30)  # class 1 has no samples; class 0 only 3
    s = ClassGroupedSampler(y, 3, n_classes=2, n_pos=5, n_unc=0, seed=1)
    b = s.sample()
    assert sorted(b.classes.tolist()) == [0, 2] and b.unc_idx.shape == (0,)
    assert torch.equal(y[b.pos_idx], b.classes[:, None].expand(2, 5))  # class 0 drawn with replacement
    with pytest.raises(ValueError, match="3 classes that have samples|2 classes"):
        ClassGroupedSampler(y, 3, n_classes=3, n_pos=5, n_unc=0)
    toy = ClassGroupedSampler(torch.zeros(1000, dtype=torch.int64), 1, n_classes=1, n_pos=512, n_unc=0)
    assert toy.sample().pos_idx.unique().numel() == 512


def test_sampler_validates_arguments():
    y = _labels()
    with pytest.raises(ValueError, match="n_classes"):
        ClassGroupedSampler(y, 10, n_classes=11, n_pos=2, n_unc=0)
    for kw in ({"n_classes": 0}, {"n_pos": 0}, {"n_unc": -1}, {"n_pos": 2.5}):
        args = {"n_classes": 2, "n_pos": 2, "n_unc": 0, **kw}
        with pytest.raises(ValueError, match=next(iter(kw))):
            ClassGroupedSampler(y, 10, **args)
    with pytest.raises(ValueError, match="labels"):
        ClassGroupedSampler(y, 5, n_classes=2, n_pos=2, n_unc=0)
    s = ClassGroupedSampler(y, 10, n_classes=4, n_pos=2, n_unc=0)
    with pytest.raises(ValueError, match="evenly"):
        s.shard(0, 3)
    with pytest.raises(ValueError, match="rank"):
        s.shard(2, 2)


def test_sampler_is_deterministic_given_seed():
    y = _labels()
    a, b, c = (ClassGroupedSampler(y, 10, n_classes=3, n_pos=4, n_unc=6, seed=s) for s in (7, 7, 8))
    for _ in range(5):
        ba, bb, bc = a.sample(), b.sample(), c.sample()
        assert torch.equal(ba.classes, bb.classes) and torch.equal(ba.pos_idx, bb.pos_idx) and torch.equal(ba.unc_idx, bb.unc_idx)
    assert not torch.equal(ba.pos_idx, bc.pos_idx)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sampler_shards_union_is_the_single_process_step(world):
    y = _labels()
    single = ClassGroupedSampler(y, 10, n_classes=8, n_pos=4, n_unc=3, seed=5)
    base = ClassGroupedSampler(y, 10, n_classes=8, n_pos=4, n_unc=3, seed=5)
    single.sample(), base.sample()  # sharding continues from the sampler's position
    ranks = [base.shard(r, world) for r in range(world)]
    assert all(r.groups_per_rank == 8 // world for r in ranks)
    for _ in range(4):
        full = single.sample()
        parts = [r.sample() for r in ranks]
        assert torch.equal(torch.cat([p.classes for p in parts]), full.classes)
        assert torch.equal(torch.cat([p.pos_idx for p in parts]), full.pos_idx)
        assert all(torch.equal(p.unc_idx, full.unc_idx) for p in parts)  # shared by all groups
