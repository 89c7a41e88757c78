"""Frozen feature encoders: feature-set names and shapes, determinism, frozen-but-differentiable."""

import math

import pytest
import torch

from drifting_platform.encoders import (
    ENCODERS, STD_EPS, Encoder, PixelEncoder, build_encoder, multiscale_features, register_encoder,
)


def expected_multiscale(prefix, c, h, w):
    out = {f"{prefix}.loc": (h * w, c), f"{prefix}.mean": (1, c), f"{prefix}.std": (1, c)}
    for k in (2, 4):
        if h >= k and w >= k:
            out[f"{prefix}.p{k}_mean"] = out[f"{prefix}.p{k}_std"] = ((h // k) * (w // k), c)
    return out


def shapes(feats):
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


def test_multiscale_features_values():
    fmap = torch.randn(3, 5, 8, 8, dtype=torch.float64)
    f = multiscale_features(fmap, "m")
    assert shapes(f) == expected_multiscale("m", 5, 8, 8)
    assert all(v.shape[0] == 3 for v in f.values())
    # per-location vectors: location (i, j) of sample n is fmap[n, :, i, j]
    assert torch.allclose(f["m.loc"][1, 2 * 8 + 3].double(), fmap[1, :, 2, 3])
    assert torch.allclose(f["m.mean"][:, 0].double(), fmap.mean(dim=(2, 3)), atol=1e-6)
    std = torch.sqrt(fmap.flatten(2).var(dim=2, unbiased=False) + STD_EPS)
    assert torch.allclose(f["m.std"][:, 0].double(), std, atol=1e-5)
    # the 2x2 patch at patch-row 1, patch-col 2 covers rows 2-3, cols 4-5
    patch = fmap[:, :, 2:4, 4:6].flatten(2)
    assert torch.allclose(f["m.p2_mean"][:, 1 * 4 + 2].double(), patch.mean(dim=2), atol=1e-6)
    assert torch.allclose(f["m.p2_std"][:, 1 * 4 + 2].double(), torch.sqrt(patch.var(dim=2, unbiased=False) + STD_EPS), atol=1e-5)
    patch4 = fmap[:, :, 4:8, 0:4].flatten(2)
    assert torch.allclose(f["m.p4_std"][:, 2].double(), torch.sqrt(patch4.var(dim=2, unbiased=False) + STD_EPS), atol=1e-5)


def test_multiscale_skips_patches_larger_than_the_map():
    assert set(multiscale_features(torch.randn(2, 3, 2, 2), "s")) == {"s.loc", "s.mean", "s.std", "s.p2_mean", "s.p2_std"}
    assert set(multiscale_features(torch.randn(2, 3, 1, 1), "s")) == {"s.loc", "s.mean", "s.std"}
    # odd sizes drop the rows / columns that do not fill a patch
    assert shapes(multiscale_features(torch.randn(2, 3, 7, 7), "s"))["s.p4_mean"] == (1, 3)


def test_std_features_finite_for_constant_input():
    x = torch.full((4, 1, 16, 16), -1.0, requires_grad=True)
    enc = build_encoder("random_cnn", (1, 16, 16), widths=(8, 16))
    feats = enc(x)
    loss = sum(v.sum() for v in feats.values())
    loss.backward()
    assert all(torch.isfinite(v).all() for v in feats.values())
    assert torch.isfinite(x.grad).all()
    # the conv's zero padding makes s1 vary at the border; the image itself is constant
    pix = build_encoder("pixel", (1, 16, 16))(x)
    for k in ("pix.std", "pix.p2_std", "pix.p4_std"):
        assert torch.allclose(pix[k], torch.full_like(pix[k], math.sqrt(STD_EPS)))
    x.grad = None
    sum(v.sum() for v in pix.values()).backward()
    assert torch.isfinite(x.grad).all()


def test_pixel_encoder_on_2d_data():
    enc = build_encoder("pixel", (2,))
    x = torch.randn(7, 2)
    f = enc(x)
    assert list(f) == ["x"] and f["x"].shape == (7, 1, 2)
    assert torch.equal(f["x"][:, 0], x)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (3, 32, 32), (4, 32, 32)])
def test_pixel_encoder_on_images(shape):
    c, h, w = shape
    enc = build_encoder("pixel", shape)
    x = torch.rand(2, *shape) * 2 - 1
    f = enc(x)
    assert shapes(f) == {"flat": (1, c * h * w), **expected_multiscale("pix", c, h, w)}
    assert torch.equal(f["flat"][:, 0], x.flatten(1))
    assert enc.feature_shapes() == shapes(f)
    assert list(build_encoder("pixel", shape, multiscale=False)(x)) == ["flat"]


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (3, 32, 32)])
def test_random_cnn_feature_sets(shape):
    c, h, w = shape
    widths = (8, 16, 32)
    enc = build_encoder("random_cnn", shape, widths=widths)
    f = enc(torch.rand(2, *shape) * 2 - 1)
    expected = {"flat": (1, c * h * w)}
    for i, width in enumerate(widths):  # stage 1 keeps the resolution, later stages halve it
        s = 2 ** i
        expected.update(expected_multiscale(f"s{i + 1}", width, h // s, w // s))
    assert shapes(f) == expected
    assert enc.feature_names() == list(expected)
    assert "flat" not in build_encoder("random_cnn", shape, widths=widths, include_input=False)(torch.zeros(1, *shape))


def test_random_cnn_widths_from_yaml_lists_and_default():
    assert build_encoder("random_cnn", (4, 8, 8), widths=[8, 16]).widths == (8, 16)
    assert build_encoder("random_cnn", (1, 8, 8)).widths == (32, 64, 128)


def test_random_cnn_is_deterministic_and_ignores_global_rng():
    torch.manual_seed(123)
    a = build_encoder("random_cnn", (1, 16, 16), widths=(8, 16))
    state = torch.get_rng_state()
    torch.manual_seed(999)
    torch.rand(10)
    b = build_encoder("random_cnn", (1, 16, 16), widths=(8, 16))
    c = build_encoder("random_cnn", (1, 16, 16), widths=(8, 16), seed=1)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not torch.equal(a.convs[0].weight, c.convs[0].weight)
    # building an encoder does not consume the global RNG
    torch.set_rng_state(state)
    build_encoder("random_cnn", (1, 16, 16), widths=(8, 16))
    assert torch.equal(torch.get_rng_state(), state)


def test_random_cnn_activations_keep_their_scale():
    enc = build_encoder("random_cnn", (1, 32, 32), widths=(32, 64, 128, 128))
    x = torch.randn(16, 1, 32, 32)
    f = enc(x)
    for i in range(1, 5):
        rms = f[f"s{i}.loc"].square().mean().sqrt().item()
        assert 0.2 < rms < 5.0, (i, rms)


@pytest.mark.parametrize("name,shape", [("pixel", (1, 8, 8)), ("random_cnn", (1, 16, 16)), ("random_cnn", (4, 8, 8))])
def test_frozen_but_differentiable_in_the_input(name, shape):
    enc = build_encoder(name, shape, **({"widths": (8, 16)} if name == "random_cnn" else {}))
    assert not enc.training and all(not p.requires_grad for p in enc.parameters())
    enc.train()  # e.g. a parent module switched to training: a frozen encoder stays in eval
    assert not enc.training
    x = torch.randn(3, *shape, requires_grad=True)
    feats = enc(x)
    sum(v.square().mean() for k, v in feats.items() if k != "flat").backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


def test_random_cnn_rejects_vector_data():
    with pytest.raises(ValueError, match="input_shape"):
        build_encoder("random_cnn", (2,))


def test_registry_validation():
    assert {"pixel", "random_cnn"} <= set(ENCODERS)
    with pytest.raises(ValueError, match="unknown encoder 'nope'.*pixel"):
        build_encoder("nope", (2,))
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("pixel")(PixelEncoder)
    with pytest.raises(TypeError, match="not a subclass of Encoder"):
        register_encoder("not_an_encoder")(torch.nn.Linear)
    assert "not_an_encoder" not in ENCODERS
    with pytest.raises(TypeError):
        build_encoder("random_cnn", (1, 8, 8), width=(8,))  # typo'd kwarg: the loop's ConfigError

    @register_encoder("test_mean_only")
    class MeanOnly(Encoder):
        def forward(self, x):
            return {"m": x.flatten(1).mean(dim=1, keepdim=True)[:, :, None]}

    try:
        enc = build_encoder("test_mean_only", (1, 4, 4))
        assert isinstance(enc, MeanOnly) and enc.feature_shapes() == {"m": (1, 1)}
    finally:
        del ENCODERS["test_mean_only"]


def test_bf16_autocast_gives_float32_statistics():
    enc = build_encoder("random_cnn", (1, 8, 8), widths=(8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = enc(torch.randn(2, 1, 8, 8))
    assert f["s1.std"].dtype == torch.float32 and torch.isfinite(f["s1.std"]).all()


def test_random_cnn_first_stride_halves_the_first_stage():
    enc = build_encoder("random_cnn", (1, 32, 32), widths=(8, 16), first_stride=2)
    shapes = enc.feature_shapes()
    assert shapes["s1.loc"] == (16 * 16, 8) and shapes["s2.loc"] == (8 * 8, 16) and shapes["flat"] == (1, 1024)
    with pytest.raises(ValueError, match="first_stride"):
        build_encoder("random_cnn", (1, 32, 32), first_stride=3)


# --------------------------------------------------------------------------- artifact format


def test_parse_model_uri():
    from drifting_platform.encoder_artifact import ModelURI, model_uri, parse_model_uri

    assert parse_model_uri("models:/enc-a/3") == ModelURI("enc-a", 3) and model_uri("enc-a", 3) == "models:/enc-a/3"
    latest = parse_model_uri("models:/enc-a/latest")
    assert latest == ModelURI("enc-a") and latest.latest
    assert parse_model_uri("models:/enc-a@prod") == ModelURI("enc-a", alias="prod")
    with pytest.raises(ValueError, match="version must be a number"):
        parse_model_uri("models:/enc-a/v2")
    for bad in ("models:/enc-a", "runs:/abc/encoder", "models:/a/b/c"):
        with pytest.raises(ValueError, match="expected models:/NAME/VERSION"):
            parse_model_uri(bad)


def test_registry_sources_go_through_registered_resolvers(tmp_path, monkeypatch):
    from drifting_platform import encoder_artifact as A

    monkeypatch.setattr(A, "_RESOLVERS", {})
    with pytest.raises(RuntimeError, match="import drifting_platform.tracking"):
        A.resolve_source("models:/enc/1")
    asked = []
    A.register_source_resolver("models:/", lambda s: asked.append(s) or tmp_path)
    assert A.resolve_source("models:/enc/1") == tmp_path and asked == ["models:/enc/1"]
    with pytest.raises(FileNotFoundError, match="pretrain"):
        A.resolve_source(str(tmp_path / "nothing"))


def test_artifact_module_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, drifting_platform.encoder_artifact; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
