"""The command line: data export, config show, and clear errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from drifting_platform.data import build_dataset, read_shards

CLI = str(Path(sys.executable).parent / "drifting-platform")


def cli(*args):
    return subprocess.run([CLI, *args], capture_output=True, text=True)


def test_data_export_round_trip(tmp_path):
    out = cli("data", "export", "digits", "--out", str(tmp_path / "d"), "--set", "size=16", "--set", "shard_size=500")
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "d").glob("*.parquet"))) == 4  # 1797 samples / 500
    back = read_shards(tmp_path / "d")
    ref = build_dataset("digits", size=16)
    assert back.shape == ref.shape == (1, 16, 16) and back.num_classes == 10
    np.testing.assert_allclose(back.x.numpy(), ref.x.numpy())
    np.testing.assert_array_equal(back.y.numpy(), ref.y.numpy())


def test_data_export_unknown_name_lists_choices(tmp_path):
    out = cli("data", "export", "imagenet", "--out", str(tmp_path / "x"))
    assert out.returncode != 0 and "digits" in out.stderr and "8gaussians" in out.stderr


def test_data_export_missing_torchvision_root_names_files(tmp_path):
    out = cli("data", "export", "mnist", "--out", str(tmp_path / "x"), "--set", f"root={tmp_path}")
    assert out.returncode != 0 and "train-images-idx3-ubyte" in out.stderr


def test_config_show_resolves_names_and_presets():
    out = cli("config", "show", "digits", "--preset", "smoke", "--set", "train.steps=7")
    assert out.returncode == 0, out.stderr
    assert "steps: 7" in out.stdout and "presets: local, paper, smoke" in out.stdout
    bad = cli("config", "show", "digits", "--set", "cfg.gamma=1.5")
    assert bad.returncode != 0 and "cfg.gamma" in bad.stderr
