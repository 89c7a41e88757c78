"""Pre-training the release's Latent-MAE with the release's MAE objective (`pretrain`,
objective `release_mae`) and loading the result as `encoder: {name: release_mae, source: ...}`.

Small networks on real digits; a real SQLite MLflow store in a temporary folder.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import REPO

from drifting_platform.config import ConfigError
from drifting_platform.models.release_mae import ReleaseMAE, fold_patches
from drifting_platform.pretrain import ReleaseMAEObjective, build_release_mae_objective, release_lambda_cls
from drifting_platform.pretrain.config import config_hash, load_pretrain_config

pytestmark = pytest.mark.usefixtures("isolated_home")  # a fresh DRIFTING_HOME and SQLite store per test

CONFIG = REPO / "experiments" / "encoders" / "release_mae_digits32.yaml"


def _cfg(*sets: str, preset: str = "smoke"):
    return load_pretrain_config(CONFIG, preset, ["train.threads=1", *sets])


def _objective(ips: int = 2, **kw) -> ReleaseMAEObjective:
    torch.manual_seed(0)
    return build_release_mae_objective(1, 10, base_channels=32, layers=(1, 1, 1, 1), input_patch_size=ips, **kw)


# ------------------------------------------------------------------ the loss


def test_recon_loss_counts_masked_locations_once_summing_channels():
    """recon = sum over masked locations and channels / masked locations (the release's
    mask [B, H, W, 1] against mse [B, H, W, C]): with a zero reconstruction of an all-ones
    folded input of C' = 4 channels the loss is exactly 4, whatever the mask."""
    obj = _objective(ips=2)
    obj.net.decode = lambda feats: torch.zeros(3, 4, 16, 16)  # the folded input of 1x32x32 with p = 2
    xf = torch.ones(3, 4, 16, 16)
    mask = obj.random_mask(3, 16, 16, torch.Generator().manual_seed(1))
    assert mask.shape == (3, 1, 16, 16)
    out = obj.losses(xf, torch.zeros(3, dtype=torch.long), mask)
    torch.testing.assert_close(out["recon_loss"], torch.full((3,), 4.0))
    torch.testing.assert_close(out["loss"], out["recon_loss"])  # lambda_cls = 0


def test_loss_ignores_visible_pixels_and_the_encoder_never_sees_masked_ones():
    obj = _objective(ips=2)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    xf = fold_patches(x, 2)
    y = torch.tensor([3, 7])
    mask = obj.random_mask(2, 16, 16, torch.Generator().manual_seed(2))
    assert 0 < mask.sum() < mask.numel()

    # the gradient of the loss w.r.t. the reconstruction is zero at every visible location
    seen = {}
    decode = obj.net.decode

    def spy(feats):
        r = decode(feats)
        r.retain_grad()
        seen["r"] = r
        return r

    obj.net.decode = spy
    obj.losses(xf, y, mask)["recon_loss"].sum().backward()
    g = seen["r"].grad.abs().sum(dim=1, keepdim=True)  # [2, 1, 16, 16]
    assert g[mask == 0].max() == 0 and (g[mask == 1] > 0).float().mean() > 0.99
    obj.net.decode = decode

    # changing masked pixels changes nothing the encoder sees: same features and logits
    other = xf + mask * torch.randn_like(xf)
    with torch.no_grad():
        a = obj.net.encode(xf * (1 - mask))
        b = obj.net.encode(other * (1 - mask))
        for k in a:
            torch.testing.assert_close(a[k], b[k])
        # for a fixed reconstruction, a target differing only at visible pixels has the
        # same error term, and `losses` computes exactly that term
        r = obj.net.decode(a)
        t2 = xf + (1 - mask) * torch.randn_like(xf)
        err = lambda t: (((r - t) ** 2) * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + 1e-8)  # noqa: E731
        torch.testing.assert_close(err(xf), err(t2))
        torch.testing.assert_close(obj.losses(xf, y, mask)["recon_loss"], err(xf))


def test_mask_ratio_and_patch_structure():
    obj = _objective(ips=2)  # patch_size 2, ratio 0.5
    g = torch.Generator().manual_seed(0)
    mask = obj.random_mask(256, 16, 16, g)
    assert abs(float(mask.mean()) - 0.5) < 0.02  # masked fraction of locations
    # constant on every 2x2 patch, values 0 / 1
    blocks = mask.reshape(256, 1, 8, 2, 8, 2)
    assert torch.equal(blocks.amin(dim=(3, 5)), blocks.amax(dim=(3, 5)))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # ratio uniform per sample in [min, max]
    wide = _objective(ips=2, mask_ratio_min=0.1, mask_ratio_max=0.9).random_mask(400, 16, 16, g)
    per = wide.mean(dim=(1, 2, 3))
    assert per.std() > 0.15 and abs(float(per.mean()) - 0.5) < 0.05
    assert _objective(ips=2, mask_ratio_min=0.0, mask_ratio_max=0.0).random_mask(4, 16, 16, g).sum() == 0
    with pytest.raises(ValueError, match="patch_size"):
        obj.random_mask(1, 15, 16, g)


def test_lambda_cls_ramp_is_the_releases():
    kw = {"lambda_cls": 0.0, "finetune_last_steps": 40, "warmup_finetune": 10, "finetune_cls": 0.1}
    lam = [release_lambda_cls(s, 100, **kw) for s in range(100)]
    assert lam[:60] == [0.0] * 60  # before the last 40 steps
    assert lam[60] == 0.0 and lam[65] == pytest.approx(0.05) and lam[69] == pytest.approx(0.09)
    assert lam[70:] == [pytest.approx(0.1)] * 30
    assert release_lambda_cls(99, 100, lambda_cls=0.3) == 0.3  # no fine-tuning: the base weight throughout
    obj = _objective(**kw)
    obj.set_step(65, 100)
    assert obj.lambda_cls == pytest.approx(0.05)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    loss, info = obj.loss(x, torch.Generator().manual_seed(0), labels=y)
    assert info["lambda_cls"] == pytest.approx(0.05)
    assert info["loss"] == pytest.approx(0.05 * info["cls_loss"] + 0.95 * info["recon_loss"], rel=1e-5)


# ------------------------------------------------------------------ config


def test_shipped_config_loads_both_presets():
    for preset in ("smoke", "local"):
        cfg = _cfg(preset=preset)
        assert cfg.objective.name == "release_mae" and cfg.data.size == 32
        r = cfg.release_mae
        assert r.base_channels % 32 == 0 and (r.mask_ratio_min, r.mask_ratio_max, r.patch_size) == (0.5, 0.5, 2)
    assert _cfg("release_mae=null").release_mae is not None  # omitted section: the defaults


@pytest.mark.parametrize(
    "sets, match",
    [
        (["release_mae.base_channels=48"], r"^release_mae\.base_channels"),
        (["release_mae.layers=[1,1,1]"], r"^release_mae\.layers: expected 4 values"),
        (["release_mae.layers=[1,0,1,1]"], r"^release_mae\.layers\[1\]"),
        (["release_mae.nope=1"], r"^release_mae\.nope: unknown key"),
        (["release_mae.input_patch_size=3"], r"^release_mae\.input_patch_size"),
        (["release_mae.patch_size=3"], r"^release_mae\.patch_size"),
        (["release_mae.mask_ratio_min=0.8"], r"^release_mae\.mask_ratio_min"),
        (["release_mae.finetune_cls=2"], r"^release_mae\.finetune_cls"),
        (["release_mae.finetune_last_steps=5"], r"^release_mae\.finetune_last_steps"),  # smoke: 4 steps
        (["objective.kwargs.mask_ratio=0.5"], r"^objective\.kwargs"),
        (["backbone.widths=[16,32]"], r"^backbone"),
        (["augment.strength=0.5"], r"^augment"),
        (["finetune.steps=3"], r"^finetune\.steps"),
        (["objective.name=mae"], r"^release_mae: only objective release_mae"),
    ],
)
def test_bad_config_names_the_key(sets, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(*sets)


def test_other_objectives_hash_as_before():
    """Adding the section must not change the config hash of existing encoders (sweeps reuse
    registered versions by hash)."""
    import hashlib

    from drifting_platform.pretrain.config import to_dict

    cfg = load_pretrain_config(REPO / "experiments" / "encoders" / "mae_digits32.yaml", "local")
    d = to_dict(cfg)
    assert d.pop("release_mae") is None
    for key in ("log_every", "ckpt_every", "device", "threads"):
        d["train"].pop(key)
    d.pop("register")
    assert config_hash(cfg) == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(_cfg()) != config_hash(_cfg("release_mae.base_channels=64"))


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """40 steps of the release objective on digits (classifier ramp in the last 10), tracked
    and registered in a temporary MLflow store."""
    import os

    from drifting_platform.launch.pretrain import run_pretrain

    tmp = tmp_path_factory.mktemp("relmae")
    old = {k: os.environ.get(k) for k in ("DRIFTING_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["DRIFTING_HOME"] = str(tmp / "home")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    try:
        cfg = _cfg(
            "train.steps=40", "train.batch_size=32", "train.log_every=1", "train.lr=2e-3", "train.warmup_steps=2",
            "release_mae.layers=[1,1,1,1]", "release_mae.finetune_last_steps=10", "release_mae.warmup_finetune=5",
        )
        res = run_pretrain(cfg, tmp / "run", progress=False)
        yield {"cfg": cfg, "run": tmp / "run", "res": res, "tmp": tmp}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_pretrain_loss_falls_and_ramp_is_logged(trained):
    rows = [json.loads(line) for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    recon = [r["recon_loss"] for r in rows]
    assert sum(recon[-5:]) / 5 < 0.7 * sum(recon[:5]) / 5, recon
    assert all(abs(r["mask_ratio"] - 0.5) < 0.1 for r in rows)
    lam = [r["lambda_cls"] for r in rows]  # row k is step k - 1; fine-tuning = steps 30..39, ramp over 5
    assert lam[:31] == [0.0] * 31 and lam[32] == pytest.approx(0.04) and lam[-1] == pytest.approx(0.1)
    s = trained["res"]["summary"]
    assert s["steps"] == 40 and 0.0 <= s["probe_accuracy"] <= 1.0
    meta = json.loads((trained["run"] / "encoder" / "encoder.json").read_text())
    assert meta["objective"] == "release_mae" and meta["finetuned"] and meta["input_shape"] == [1, 32, 32]
    assert meta["model_config"]["input_patch_size"] == 4 and meta["model_config"]["num_classes"] == 10
    assert meta["config_hash"] == config_hash(trained["cfg"])


@pytest.mark.slow
@pytest.mark.parametrize("where", ["run", "encoder", "registry"])
def test_pretrain_output_loads_as_release_mae_source(trained, where, monkeypatch):
    from drifting_platform.encoders import build_encoder

    monkeypatch.setenv("DRIFTING_HOME", str(trained["tmp"] / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained['tmp']}/mlflow.db")
    reg = trained["res"]["registered"]
    source = {"run": str(trained["run"]), "encoder": str(trained["run"] / "encoder"), "registry": reg["uri"]}[where]
    assert reg["uri"] == "models:/release-mae-digits32-w32/1"
    if where == "registry":  # the version names the network's stage widths, as other encoders' do
        from mlflow.tracking import MlflowClient

        mv = MlflowClient(tracking_uri=f"sqlite:///{trained['tmp']}/mlflow.db").get_model_version("release-mae-digits32-w32", "1")
        assert mv.tags["widths"] == str(json.loads((trained["run"] / "encoder" / "encoder.json").read_text())["widths"])
    enc = build_encoder("release_mae", (1, 32, 32), source=source)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    enc.train()
    assert not enc.training  # frozen stays frozen

    # the features are release_activations of the trained weights (plus the flattened input)
    meta = json.loads((trained["run"] / "encoder" / "encoder.json").read_text())
    ref = ReleaseMAE(**meta["model_config"])
    ref.load_state_dict(torch.load(trained["run"] / "encoder" / "weights.pt", weights_only=True))
    ref.eval()
    trained_obj = torch.load(trained["run"] / "checkpoint.pt", weights_only=False)["objective"]
    for k, v in ref.state_dict().items():  # weights.pt holds the final trained network
        torch.testing.assert_close(v, trained_obj[f"net.{k}"])
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        got, want = enc(x), ref.release_activations(x)
    assert set(got) == set(want) | {"global"}
    for k, v in want.items():
        torch.testing.assert_close(got[k], v)
    torch.testing.assert_close(got["global"], x.permute(0, 2, 3, 1).reshape(3, 1, -1))

    prov = enc.provenance()
    assert prov["objective"] == "release_mae" and prov["config_hash"] == config_hash(trained["cfg"])
    assert prov["source"] == source
    if where == "registry":
        assert prov["pinned"] == reg["uri"]

    # differentiable in its input
    xi = torch.zeros(2, 1, 32, 32, requires_grad=True)
    enc(xi)["layer2_mean"].sum().backward()
    assert xi.grad is not None and xi.grad.abs().sum() > 0

    # the other encoders refuse it by name
    with pytest.raises(ValueError, match="use encoder.name: release_mae"):
        build_encoder("learned", (1, 32, 32), source=str(trained["run"] / "encoder"))
    with pytest.raises(ValueError, match="trained on inputs"):
        build_encoder("release_mae", (1, 16, 16), source=str(trained["run"] / "encoder"))


def test_release_mae_refuses_other_artifacts(tmp_path):
    from drifting_platform.encoders import build_encoder

    d = tmp_path / "enc"
    d.mkdir()
    (d / "encoder.json").write_text(json.dumps({"format": "drifting-encoder/1", "objective": "mae", "backbone": {}, "input_shape": [1, 32, 32]}))
    torch.save({}, d / "weights.pt")
    with pytest.raises(ValueError, match="use encoder.name: mae"):
        build_encoder("release_mae", (1, 32, 32), source=str(d))
    with pytest.raises(FileNotFoundError, match="pretrain"):
        build_encoder("release_mae", (1, 32, 32), source=str(tmp_path / "nothing"))
