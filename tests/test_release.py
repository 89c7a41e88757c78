"""Release artifacts (the README's release interface): the golden cases through `load_release` (release folder and
converted folder), round trips of configurations outside the golden set, invariants of the
release's math, bad input, hf:// through huggingface_hub's cache, the CLI, and MLflow tags."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import golden_path, in_ci

from drifting_platform import release as R
from drifting_platform.cli import main as cli_main
from drifting_platform.models.release_mae import ReleaseMAE
from drifting_platform.models.release_dit import ReleaseDiTGenerator, release_pos_embed, rope, swiglu_hidden

CLI = str(Path(sys.executable).parent / "drifting-platform")
TOL = 1e-4  # the golden README's agreement: max|ours - ref| / (max|ref| + 1e-6)
CASES = ["generator_latent_tiny", "generator_plain_tiny", "mae_latent_tiny", "mae_pixel_tiny"]


# --------------------------------------------------------------------------- golden files


def _golden_dir(name: str = "") -> Path:
    """The folder of the release's golden cases that holds case `name` (the generator cases
    ship under tests/data/golden, the MAE ones are read from the shared golden folder)."""
    return golden_path(f"release_models/{name}").parent if name else golden_path("release_models")


def _case(name: str) -> Path:
    """The golden case's folder; missing: a failure in CI, a skip elsewhere."""
    folder = _golden_dir(name) / name
    if not (folder / R.RELEASE_PARAMS).is_file() or not (folder.parent / f"{name}.npz").is_file():
        message = f"golden release case {folder} is missing (set DRIFTING_GOLDEN_DIR)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return folder


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / (np.abs(ref).max() + 1e-6))


def _check_against_golden(module: torch.nn.Module, meta: dict, npz: Path) -> float:
    """Every output array of the case within TOL; returns the worst error."""
    z = np.load(npz)
    x = torch.from_numpy(z["in/x_bhwc"]).permute(0, 3, 1, 2).float()
    worst = 0.0
    with torch.no_grad():
        if meta["kind"] == "gen":
            assert isinstance(module, ReleaseDiTGenerator)
            labels = torch.from_numpy(z["in/labels"]).long()
            styles = torch.from_numpy(z["in/noise_labels"]).long()
            scale = torch.from_numpy(z["in/cfg_scale"]).float()
            outs = {
                "cond": module.condition(labels, scale, styles if module.n_style else None).numpy(),
                "samples_bhwc": module.release_forward(x, labels, scale, styles).permute(0, 2, 3, 1).numpy(),
            }
        else:
            assert isinstance(module, ReleaseMAE)
            feats = module.release_activations(x)
            keys = {k[len("out/feat/"):] for k in z.files if k.startswith("out/feat/")}
            assert set(feats) == keys, sorted(set(feats) ^ keys)
            outs = {f"feat/{k}": v.numpy() for k, v in feats.items()}
    for key, ours in outs.items():
        ref = z[f"out/{key}"]
        assert ours.shape == ref.shape, (key, ours.shape, ref.shape)
        assert ours.dtype == np.float32, key
        err = _rel_err(ours, ref)
        assert err <= TOL, f"{npz.stem} {key}: relative error {err:.2e}"
        worst = max(worst, err)
    return worst


@pytest.mark.parametrize("form", ["release", "converted"])
@pytest.mark.parametrize("case", CASES)
def test_golden_case(case, form, tmp_path):
    folder = _case(case)
    source = folder if form == "release" else R.convert_release(folder, tmp_path / "conv")
    module, meta = R.load_release(source)
    assert meta["kind"] == ("gen" if case.startswith("generator") else "mae")
    assert meta["identity"]["sha256"] == R.sha256_file(folder / R.RELEASE_PARAMS)
    assert not module.training and all(p.dtype == torch.float32 for p in module.parameters())
    _check_against_golden(module, meta, folder.parent / f"{case}.npz")


def test_params_tree_bare_or_under_params_key():
    """generator_plain_tiny keeps its tree under "params", the others bare; both read the same."""
    raw = msgpack.unpackb((_case("generator_plain_tiny") / R.RELEASE_PARAMS).read_bytes(), raw=False, strict_map_key=False, ext_hook=R._ext_hook)
    assert set(raw) == {"params"}
    tree = R.read_msgpack(_case("generator_plain_tiny") / R.RELEASE_PARAMS)
    assert "LightningDiT_0" in tree and "params" not in tree


# --------------------------------------------------------------------------- a test-only writer


def _pack_array(obj):
    if isinstance(obj, np.ndarray):  # flax.serialization: ext 1 = packb((shape, dtype name, bytes))
        return msgpack.ExtType(1, msgpack.packb((list(obj.shape), obj.dtype.name, obj.tobytes("C")), use_bin_type=True))
    raise TypeError(type(obj))


def pack_tree(tree: dict) -> bytes:
    return msgpack.packb(tree, default=_pack_array, use_bin_type=True)


def nest(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, arr in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = arr
    return tree


def release_flat(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """Our module's parameters as the release's flat tree (kernels transposed back)."""
    pmap = R.generator_param_map(module) if isinstance(module, ReleaseDiTGenerator) else R.mae_param_map(module)
    state = module.state_dict()
    out = {}
    for src, (dst, how) in pmap.items():
        t = state[dst].detach().float()
        if how == R._DENSE and t.dim() == 2:
            t = t.t()
        elif how == R._CONV and t.dim() == 4:
            t = t.permute(2, 3, 1, 0)
        out[src] = np.ascontiguousarray(t.numpy())
    return out


def write_artifact(folder: Path, flat: dict[str, np.ndarray], kind: str, model_config: dict, *, under_params: bool = False, meta_extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tree = nest(flat)
    (folder / R.RELEASE_PARAMS).write_bytes(pack_tree({"params": tree} if under_params else tree))
    meta = {"format": "flax.msgpack", "kind": kind, "backend": "jax", "model_config": model_config, **(meta_extra or {})}
    (folder / R.RELEASE_META).write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("case", CASES)
def test_writer_reproduces_golden_tree(case):
    """The writer inverts the parameter maps exactly on the golden files (so the round trips
    below write what the release writes)."""
    folder = _case(case)
    module, _ = R.load_release(folder)
    ref = R.flatten_tree(R.read_msgpack(folder / R.RELEASE_PARAMS))
    ours = release_flat(module)
    assert set(ours) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(ours[k], ref[k].astype(np.float32), err_msg=k)


def _perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter away from its (partly zero) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


GEN_BASE = dict(
    num_classes=7, noise_classes=5, noise_coords=3, input_size=8, in_channels=4, out_channels=4, n_cls_tokens=2,
    patch_size=2, hidden_size=96, depth=2, num_heads=6, mlp_ratio=4.0, use_qknorm=True, use_swiglu=True,
    use_rope=True, use_rmsnorm=True, use_bf16=False, attn_fp32=True, cond_dim=96,
)
GEN_CONFIGS = {
    # cond_dim != hidden_size, QK-norm with LayerNorm (affine), class tokens without RoPE
    "layernorm_qknorm_cls_no_rope": dict(cond_dim=40, use_rmsnorm=False, use_qknorm=True, use_rope=False, n_cls_tokens=3),
    # another head split (2 heads of 64), GELU, no class tokens, patch 4 on 16x16x3, no style
    "two_heads_gelu_patch4": dict(hidden_size=128, num_heads=2, cond_dim=64, use_swiglu=False, n_cls_tokens=0, patch_size=4,
                                  input_size=16, in_channels=3, out_channels=3, noise_classes=0, noise_coords=1, mlp_ratio=2.0),
    # many heads of 8, depth 3, RMSNorm without QK-norm, one class token with RoPE
    "eight_heads_rope_one_cls": dict(hidden_size=64, num_heads=8, cond_dim=80, depth=3, use_qknorm=False, n_cls_tokens=1, mlp_ratio=3.0),
}
MAE_CONFIGS = {
    "layers_3121_ips4": dict(num_classes=6, in_channels=3, base_channels=32, patch_size=2, layers=[3, 1, 2, 1], use_bf16=False, input_patch_size=4),
    "layers_1113_base64": dict(num_classes=3, in_channels=4, base_channels=64, patch_size=2, layers=[1, 1, 1, 3], use_bf16=False, input_patch_size=1),
}
MAE_INPUT = {"layers_3121_ips4": (3, 32, 32), "layers_1113_base64": (4, 16, 16)}


def _gen_inputs(g: ReleaseDiTGenerator, b: int = 3, seed: int = 0):
    rng = torch.Generator().manual_seed(seed)
    c, s = g.config["in_channels"], g.config["input_size"]
    x = torch.randn(b, c, s, s, generator=rng)
    labels = torch.randint(0, g.config["num_classes"], (b,), generator=rng)
    scale = 1 + 3 * torch.rand(b, generator=rng)
    styles = torch.randint(0, max(g.config["noise_classes"], 1), (b, g.config["noise_coords"]), generator=rng) if g.n_style else None
    return x, labels, scale, styles


@pytest.mark.parametrize("name", sorted(GEN_CONFIGS))
def test_generator_round_trip_unseen_config(name, tmp_path):
    cfg = {**GEN_BASE, **GEN_CONFIGS[name]}
    ours = _perturb(R.build_module("gen", cfg, name), seed=1)
    folder = write_artifact(tmp_path / name, release_flat(ours), "gen", cfg, under_params=name.startswith("two"))
    back, meta = R.load_release(folder)
    assert meta["model_config"] == cfg and back.config["cond_dim"] == cfg["cond_dim"]
    args = _gen_inputs(ours)
    with torch.no_grad():
        want, got = ours.release_forward(*args), back.release_forward(*args)
    assert got.shape == args[0].shape
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # and through the converted folder
    conv, _ = R.load_release(R.convert_release(folder, tmp_path / "conv"))
    with torch.no_grad():
        torch.testing.assert_close(conv.release_forward(*args), want, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MAE_CONFIGS))
def test_mae_round_trip_unseen_config(name, tmp_path):
    cfg = MAE_CONFIGS[name]
    ours = _perturb(R.build_module("mae", cfg, name), seed=2)
    folder = write_artifact(tmp_path / name, release_flat(ours), "mae", cfg)
    back, _ = R.load_release(folder, kind="mae")
    x = torch.randn(2, *MAE_INPUT[name], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = ours.release_activations(x), back.release_activations(x)
    assert set(got) == set(want)
    n_blocks = sum(n // 2 for n in cfg["layers"])  # every 2nd block of each stage
    assert sum(k.endswith("_mean") for k in got) == 5 + n_blocks
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


# --------------------------------------------------------------------------- invariants


def test_rope_depends_on_relative_position_only():
    torch.manual_seed(0)
    n, d = 12, 16
    qv, kv = torch.randn(d), torch.randn(d)
    q = qv.expand(1, 1, n, d).clone()
    k = kv.expand(1, 1, n, d).clone()
    qr, kr = rope(q, k)
    scores = (qr[0, 0] @ kr[0, 0].T)  # [n, n]: q at position m, k at position j
    for shift in range(-3, 4):
        diag = torch.diagonal(scores, offset=shift)
        assert torch.allclose(diag, diag[0].expand_as(diag), atol=1e-5), shift
    # norms are kept (a rotation) and position 0 is untouched
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(qr[..., 0, :], q[..., 0, :])


def test_swiglu_hidden_rounding():
    assert swiglu_hidden(768, 4.0) == 2048  # B: int(2/3 * 3072) = 2048
    assert swiglu_hidden(1024, 4.0) == 2752  # L: 2730 rounded up to a multiple of 32
    assert swiglu_hidden(64, 4.0) == 192  # the golden case: 170 -> 192
    g = ReleaseDiTGenerator((4, 8, 8), 3, hidden_size=64, depth=1, num_heads=4, n_cls_tokens=0, noise_classes=0)
    assert g.blocks[0].mlp.w1.out_features == 192


def _sincos_reference(dim: int, grid: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed, written out independently."""
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))  # 'xy': gw varies along columns
    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    return np.concatenate([one(dim // 2, gw), one(dim // 2, gh)], axis=1)


def test_pos_embed_init_is_the_sincos_table():
    np.testing.assert_allclose(release_pos_embed(32, 4).numpy(), _sincos_reference(32, 4), atol=1e-6)
    g = ReleaseDiTGenerator((4, 8, 8), 3, hidden_size=48, depth=1, num_heads=4, n_cls_tokens=2)
    np.testing.assert_allclose(g.pos_embed[0].detach().numpy(), _sincos_reference(48, 4), atol=1e-6)
    assert g.pos_embed.requires_grad  # learnable


@pytest.mark.parametrize("n_cls", [0, 4])
def test_adaln_zero_init_gives_zero_output_and_class_tokens_are_dropped(n_cls):
    torch.manual_seed(0)
    g = ReleaseDiTGenerator((4, 8, 8), 5, hidden_size=64, depth=2, num_heads=4, n_cls_tokens=n_cls, noise_classes=6, noise_coords=2).eval()
    x, labels, scale, styles = _gen_inputs(g, b=4)
    with torch.no_grad():
        out = g.release_forward(x, labels, scale, styles)
        assert out.shape == x.shape and torch.count_nonzero(out) == 0
        _perturb(g, seed=5)
        out = g.release_forward(x, labels, scale, styles)
    assert out.shape == x.shape and out.abs().max() > 0  # image tokens only: class tokens are dropped


def test_flat_noise_gives_style_indices_in_range():
    g = ReleaseDiTGenerator((4, 8, 8), 5, hidden_size=32, depth=1, num_heads=2, noise_classes=6, noise_coords=3)
    assert g.noise_dim == 4 * 8 * 8 + 3
    _, styles = g.split_noise(torch.randn(500, g.noise_dim) * 3)
    assert styles.shape == (500, 3) and styles.min() == 0 and styles.max() == 5


# --------------------------------------------------------------------------- bad input


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(R.ReleaseError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


@pytest.fixture
def gen_copy(tmp_path):
    dst = tmp_path / "gen"
    shutil.copytree(_case("generator_latent_tiny"), dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    dst.chmod(0o755)
    return dst


def test_truncated_msgpack(gen_copy):
    f = gen_copy / R.RELEASE_PARAMS
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    msg = _one_line_error(R.load_release, gen_copy)
    assert str(f) in msg and "truncated" in msg


@pytest.mark.parametrize("content", [b'{"not": "msgpack"}\n', b"", b"\x93\x01\x02\x03"])
def test_not_a_msgpack_parameter_file(gen_copy, content):
    f = gen_copy / R.RELEASE_PARAMS
    f.write_bytes(content)
    msg = _one_line_error(R.load_release, gen_copy)
    assert str(f) in msg and "not a flax msgpack parameter file" in msg


def test_metadata_without_model_config(gen_copy):
    meta = json.loads((gen_copy / R.RELEASE_META).read_text())
    del meta["model_config"]
    (gen_copy / R.RELEASE_META).write_text(json.dumps(meta))
    msg = _one_line_error(R.load_release, gen_copy)
    assert str(gen_copy / R.RELEASE_META) in msg and "model_config" in msg


def _edit_tree(folder: Path, edit) -> None:
    flat = R.flatten_tree(R.read_msgpack(folder / R.RELEASE_PARAMS))
    edit(flat)
    (folder / R.RELEASE_PARAMS).write_bytes(pack_tree(nest(flat)))


def test_parameter_missing(gen_copy):
    path = "LightningDiT_0/blocks_1/Attention_0/q_norm/weight"
    _edit_tree(gen_copy, lambda flat: flat.pop(path))
    msg = _one_line_error(R.load_release, gen_copy)
    assert path in msg and "missing" in msg and str(gen_copy / R.RELEASE_PARAMS) in msg


def test_parameter_extra(gen_copy):
    path = "LightningDiT_0/blocks_2/TorchLinear_0/Dense_0/kernel"
    _edit_tree(gen_copy, lambda flat: flat.__setitem__(path, np.zeros((64, 384), np.float32)))
    msg = _one_line_error(R.load_release, gen_copy)
    assert path in msg and "unexpected" in msg


def test_parameter_wrong_shape(gen_copy):
    path = "LightningDiT_0/TorchLinear_0/Dense_0/kernel"  # patch embedding [p*p*C, D] = [16, 64]
    _edit_tree(gen_copy, lambda flat: flat.__setitem__(path, np.zeros((16, 65), np.float32)))
    msg = _one_line_error(R.load_release, gen_copy)
    assert path in msg and "(16, 65)" in msg and "(16, 64)" in msg


def test_parameter_not_numeric(gen_copy):
    path = "Embed_0/embedding"
    _edit_tree(gen_copy, lambda flat: flat.__setitem__(path, "oops"))
    msg = _one_line_error(R.load_release, gen_copy)
    assert path in msg


def test_mae_conv_wrong_shape(tmp_path):
    cfg = MAE_CONFIGS["layers_3121_ips4"]
    flat = release_flat(R.build_module("mae", cfg, "x"))
    flat["encoder/stages_2/layers_1/conv2/kernel"] = np.zeros((3, 3, 128, 64), np.float32)
    folder = write_artifact(tmp_path / "m", flat, "mae", cfg)
    msg = _one_line_error(R.load_release, folder)
    assert "encoder/stages_2/layers_1/conv2/kernel" in msg and "(3, 3, 128, 128)" in msg


def test_wrong_kind_and_missing_paths(tmp_path, gen_copy):
    assert "'mae' model is needed" in _one_line_error(R.load_release, gen_copy, kind="mae")
    assert "no such file or folder" in _one_line_error(R.load_release, tmp_path / "nowhere")
    assert "no metadata.json" in _one_line_error(R.load_release, tmp_path)
    assert R.load_release(gen_copy / R.RELEASE_PARAMS)[1]["kind"] == "gen"  # a file of the artifact: its folder
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert "a file; give the folder" in _one_line_error(R.load_release, tmp_path / "weights.bin")
    (gen_copy / R.RELEASE_PARAMS).unlink()
    assert "missing" in _one_line_error(R.load_release, gen_copy)


def _hf_env(monkeypatch, home: Path) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hf_name_not_in_cache_offline(tmp_path, monkeypatch):
    _hf_env(monkeypatch, tmp_path / "empty_hf_home")
    msg = _one_line_error(R.load_release, "hf://latent_B_sota")
    assert "hf://latent_B_sota" in msg and "hf download Goodeat/drifting" in msg and "latent_B_sota" in msg.split("hf download")[1]
    assert "expected hf://NAME" in _one_line_error(R.load_release, "hf://bad/name")
    assert "expected hf://NAME" in _one_line_error(R.load_release, "hf://..")
    assert not (tmp_path / "empty_hf_home" / "hub" / "models--Goodeat--drifting").exists()


def _fake_hf_cache(home: Path, name: str, case: str) -> Path:
    """huggingface_hub's cache layout: refs/main -> commit, snapshots/<commit>/models/<kind>/jax/NAME."""
    repo = home / "hub" / "models--Goodeat--drifting"
    commit = "0123456789abcdef0123456789abcdef01234567"
    kind = "gen" if case.startswith("generator") else "mae"
    snap = repo / "snapshots" / commit / "models" / kind / "jax" / name
    snap.mkdir(parents=True)
    for f in (R.RELEASE_PARAMS, R.RELEASE_META):
        shutil.copyfile(_case(case) / f, snap / f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.mark.parametrize("case", ["generator_latent_tiny", "mae_pixel_tiny"])
def test_hf_name_from_the_cache_offline(tmp_path, monkeypatch, case):
    _hf_env(monkeypatch, tmp_path / "hf")
    _fake_hf_cache(tmp_path / "hf", "tiny_sota", case)
    module, meta = R.load_release("hf://tiny_sota")
    assert meta["identity"]["name"] == "hf://tiny_sota"
    assert meta["identity"]["sha256"] == R.sha256_file(_case(case) / R.RELEASE_PARAMS)
    _check_against_golden(module, meta, _golden_dir(case) / f"{case}.npz")
    assert R.is_release_source("hf://tiny_sota")


# --------------------------------------------------------------------------- the CLI


def _invoke(*args):
    return CliRunner().invoke(cli_main, [str(a) for a in args])


def _assert_clean_failure(res, *needles):
    assert res.exit_code != 0
    assert isinstance(res.exception, SystemExit), f"uncaught {res.exception!r}"  # no traceback
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_cli_convert_then_sample_matches_release(tmp_path):
    folder = _case("generator_latent_tiny")
    conv = tmp_path / "conv"
    out = subprocess.run([CLI, "release", "convert", str(folder), "--out", str(conv)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sha = R.sha256_file(folder / R.RELEASE_PARAMS)
    assert "gen model" in out.stdout and "197,456 parameters" in out.stdout and sha in out.stdout and str(folder) in out.stdout
    assert sorted(p.name for p in conv.iterdir()) == sorted([R.CONVERTED_META, R.CONVERTED_WEIGHTS])
    assert b"pickle" not in (conv / R.CONVERTED_WEIGHTS).read_bytes()[:64]
    out = subprocess.run([CLI, "sample", str(conv), "--num", "20", "--out", str(tmp_path / "x.npz")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = np.load(tmp_path / "x.npz")
    assert got["samples"].shape == (20, 4, 8, 8) and got["samples"].dtype == np.float32
    np.testing.assert_array_equal(got["labels"], np.arange(20) % 11)  # balanced over the model's 11 classes
    res = _invoke("sample", folder, "--num", 20, "--out", tmp_path / "y.npz")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["samples"], got["samples"])
    # --cfg-scale reaches the generator; --seed changes the noise
    assert _invoke("sample", conv, "--num", 20, "--out", tmp_path / "z.npz", "--cfg-scale", 3).exit_code == 0
    assert not np.array_equal(np.load(tmp_path / "z.npz")["samples"], got["samples"])
    module, _ = R.load_release(conv)
    from drifting_platform.sampling import generate
    want = generate(module, torch.arange(20) % 11, cfg_scale=3.0, seed=0)
    np.testing.assert_array_equal(np.load(tmp_path / "z.npz")["samples"], want.numpy())


def test_cli_release_info_and_hf_sample(tmp_path, monkeypatch):
    res = _invoke("release", "info", _case("mae_latent_tiny"))
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["kind"] == "mae" and info["model_config"]["layers"] == [2, 2, 2, 2] and len(info["identity"]["sha256"]) == 64
    _hf_env(monkeypatch, tmp_path / "hf")
    _fake_hf_cache(tmp_path / "hf", "plain", "generator_plain_tiny")
    res = _invoke("sample", "hf://plain", "--num", 6, "--out", tmp_path / "s.npz", "--seed", 3)
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "s.npz")["samples"].shape == (6, 3, 16, 16)
    res = _invoke("release", "convert", "hf://plain", "--out", tmp_path / "c")
    assert res.exit_code == 0 and "hf://plain" in res.stdout
    assert json.loads((tmp_path / "c" / R.CONVERTED_META).read_text())["identity"]["name"] == "hf://plain"


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, gen_copy, monkeypatch):
    good = gen_copy.parent / "good"
    shutil.copytree(gen_copy, good)
    (gen_copy / R.RELEASE_PARAMS).write_bytes((gen_copy / R.RELEASE_PARAMS).read_bytes()[:1000])
    out_dir, out_npz = tmp_path / "never", tmp_path / "never.npz"
    _assert_clean_failure(_invoke("release", "convert", gen_copy, "--out", out_dir), "truncated", str(gen_copy / R.RELEASE_PARAMS))
    _assert_clean_failure(_invoke("release", "info", gen_copy), "truncated")
    _assert_clean_failure(_invoke("sample", gen_copy, "--num", 3, "--out", out_npz), "truncated")
    _assert_clean_failure(_invoke("sample", tmp_path / "nowhere", "--num", 3, "--out", out_npz), "nowhere")
    _assert_clean_failure(_invoke("release", "convert", tmp_path / "nowhere", "--out", out_dir), "no such file or folder")
    # a converted folder that became unreadable
    conv = tmp_path / "conv"
    assert _invoke("release", "convert", good, "--out", conv).exit_code == 0
    (conv / R.CONVERTED_WEIGHTS).write_bytes(b"garbage")
    _assert_clean_failure(_invoke("sample", conv, "--num", 3, "--out", out_npz), str(conv / R.CONVERTED_WEIGHTS))
    # an MAE is no generator
    _assert_clean_failure(_invoke("sample", _case("mae_pixel_tiny"), "--num", 3, "--out", out_npz), "'gen' model is needed")
    # the output path exists as a file
    (tmp_path / "afile").write_text("x")
    _assert_clean_failure(_invoke("release", "convert", good, "--out", tmp_path / "afile"), "not a folder")
    _hf_env(monkeypatch, tmp_path / "empty")
    _assert_clean_failure(_invoke("release", "convert", "hf://latent_L_sota", "--out", out_dir), "hf download Goodeat/drifting")
    _assert_clean_failure(_invoke("sample", "hf://latent_L_sota", "--num", 3, "--out", out_npz), "hf download Goodeat/drifting")
    assert not out_dir.exists() and not out_npz.exists()
    assert (tmp_path / "afile").read_text() == "x"
    assert not list(tmp_path.glob("never*"))


def test_cli_train_with_a_bad_release_writes_nothing(tmp_path, gen_copy, monkeypatch):
    (gen_copy / R.RELEASE_PARAMS).write_bytes(b"\x81")  # a map announced, never given
    out = tmp_path / "run"
    res = _invoke("train", "digits", "--preset", "smoke", "--set", "model.name=release-s/2", "--set", f"model.init={gen_copy}", "--out", out, "--quiet")
    _assert_clean_failure(res, "model.init", "truncated")
    _hf_env(monkeypatch, tmp_path / "empty")
    res = _invoke("train", "digits", "--preset", "smoke", "--set", "encoder={name: release_mae, source: hf://mae_latent_256, kwargs: {}}", "--out", out, "--quiet")
    _assert_clean_failure(res, "encoder.source", "hf download Goodeat/drifting")
    assert not out.exists()


def test_cli_error_has_no_traceback_in_a_real_process(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([CLI, "sample", "hf://pixel_B_sota", "--num", "3", "--out", str(tmp_path / "s.npz")], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "hf download Goodeat/drifting" in out.stderr
    assert not (tmp_path / "s.npz").exists()


# --------------------------------------------------------------------------- MLflow


def test_mlflow_records_the_artifacts_a_run_used(tmp_path):
    from drifting_platform import tracking as T

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = {
        "steps": 3, "fid": 1.5,
        "model_init": {"name": "hf://latent_B_sota", "sha256": "ab" * 32, "format": "flax.msgpack"},
        "encoder": {"source": "hf://mae_latent_256", "name": "hf://mae_latent_256", "sha256": "cd" * 32},
    }
    assert T.artifact_tags(summary) == {
        "drifting.model_init": "hf://latent_B_sota", "drifting.model_init_sha256": "ab" * 32,
        "drifting.encoder_source": "hf://mae_latent_256", "drifting.encoder_sha256": "cd" * 32,
    }
    assert T.artifact_tags({"fid": 1.0}) == {} and T.artifact_tags(None) == {}
    # a single run: finish(summary)
    run_id, _, finish = T.track_run("release-exp", "one", {"model.init": "hf://latent_B_sota"}, uri=uri)
    finish(summary)
    tags = T.SweepTracker("release-exp", uri=uri).get_run(run_id).data.tags
    assert tags["drifting.model_init"] == "hf://latent_B_sota" and tags["drifting.model_init_sha256"] == "ab" * 32
    assert tags["drifting.encoder_source"] == "hf://mae_latent_256" and tags["drifting.encoder_sha256"] == "cd" * 32
    # a sweep trial: the callback uploads the trial's summary.json
    tracker = T.SweepTracker("release-sweep", uri=uri)
    parent = tracker.start_sweep("s1")
    child = tracker.start_trial(parent, "row", {"a": 1})
    (tmp_path / "trial").mkdir()
    (tmp_path / "trial" / "summary.json").write_text(json.dumps({**summary, "encoder": {"source": "models:/enc/latest", "pinned": "models:/enc/4"}}))
    tracker.log_artifacts(child, [str(tmp_path / "trial" / "summary.json")])
    tags = tracker.get_run(child).data.tags
    assert tags["drifting.model_init"] == "hf://latent_B_sota" and tags["drifting.encoder_source"] == "models:/enc/4"
    assert "drifting.encoder_sha256" not in tags


def test_missing_model_config_keys_take_the_release_defaults(tmp_path):
    # the release's DitGen defaults use_rope to False (ours to True): an artifact whose
    # model_config leaves it out was built without RoPE and must be loaded without it
    cfg = {**GEN_BASE, **GEN_CONFIGS[sorted(GEN_CONFIGS)[0]], "use_rope": False}
    ours = _perturb(R.build_module("gen", cfg, "explicit"), seed=2)
    short = {k: v for k, v in cfg.items() if k != "use_rope"}
    back, _ = R.load_release(write_artifact(tmp_path / "short", release_flat(ours), "gen", short))
    assert back.config["use_rope"] is False
    args = _gen_inputs(ours)
    with torch.no_grad():
        torch.testing.assert_close(back.release_forward(*args), ours.release_forward(*args), rtol=0, atol=0)
    with pytest.raises(R.ReleaseError, match="cond_dim"):
        R.build_module("gen", {k: v for k, v in cfg.items() if k != "cond_dim"}, "metadata.json")
    mae = R.build_module("mae", {"in_channels": 4, "base_channels": 32}, "m")
    assert mae.config["layers"] == [2, 2, 2, 2] and mae.config["patch_size"] == 4 and mae.config["num_classes"] == 1000
