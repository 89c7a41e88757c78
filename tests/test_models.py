"""Generators: output shapes per preset and data shape, conditioning, gradient flow, presets."""


import pytest
import torch

from drifting_platform.models import GENERATORS, DiTGenerator, Generator, build_generator, start_resolution

IMAGE_SHAPES = [(1, 8, 8), (1, 16, 16), (1, 32, 32), (3, 32, 32), (4, 8, 8), (4, 32, 32), (1, 28, 28)]
CASES = (
    [("mlp", (2,))]
    + [("conv-s", s) for s in IMAGE_SHAPES]
    + [("conv-m", s) for s in [(1, 16, 16), (4, 32, 32)]]
    + [("dit-s/2", s) for s in [(4, 8, 8), (1, 16, 16), (4, 32, 32)]]
)


def call(g, n=4, *, labels=None, alpha=None, seed=0):
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, g.noise_dim, generator=rng)
    if labels is None:
        labels = torch.arange(n) % g.num_classes
    if alpha is None:
        alpha = 1 + 3 * torch.rand(n, generator=rng)
    return g(z, labels, alpha)


def perturb_(g, std=0.05):
    """Open every zero-initialised path (adaLN-zero gates, zero biases) with small noise."""
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn(p.shape, generator=rng) * std)


def test_presets_are_the_documented_ones():
    assert list(GENERATORS) == ["mlp", "conv-s", "conv-m", "dit-s/2", "dit-b/2", "release-s/2", "release-b/2", "release-l/2", "release-b/16", "release-l/16"]
    with pytest.raises(ValueError, match=r"unknown generator 'conv-xl'.*conv-s"):
        build_generator("conv-xl", data_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(TypeError):
        build_generator("mlp", data_shape=(2,), num_classes=1, hidden_size=3)  # typo'd kwarg
    small = build_generator("mlp", data_shape=(2,), num_classes=1, hidden=64)
    assert small.inp.out_features == 64


@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in CASES])
def test_output_shape_and_attributes(name, shape):
    g = build_generator(name, data_shape=shape, num_classes=10)
    assert isinstance(g, Generator)
    assert g.data_shape == shape and g.num_classes == 10
    x = call(g, 3)
    assert x.shape == (3, *shape) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # outputs start spread out (not collapsed) and on the data's scale
    assert 0.02 < x.std(dim=0).mean() < 5.0


def test_start_resolution():
    assert start_resolution(8, 8) == (4, 4, 1)
    assert start_resolution(16, 16) == (4, 4, 2)
    assert start_resolution(32, 32) == (4, 4, 3)
    assert start_resolution(28, 28) == (7, 7, 2)


def test_noise_dims():
    assert build_generator("dit-s/2", data_shape=(4, 8, 8), num_classes=1).noise_dim == 4 * 8 * 8
    assert build_generator("conv-s", data_shape=(1, 16, 16), num_classes=10).noise_dim == 64
    assert build_generator("mlp", data_shape=(2,), num_classes=1, noise_dim=2).noise_dim == 2


def test_dit_accepts_noise_shaped_like_the_data():
    g = build_generator("dit-s/2", data_shape=(4, 8, 8), num_classes=3)
    z = torch.randn(2, 4, 8, 8)
    lab, a = torch.tensor([0, 2]), torch.tensor([1.0, 2.0])
    assert torch.equal(g(z, lab, a), g(z.flatten(1), lab, a))
    with pytest.raises(ValueError, match="coordinates"):
        g(torch.randn(2, 10), lab, a)


@pytest.mark.parametrize("name,shape", [("mlp", (2,)), ("conv-s", (1, 16, 16)), ("conv-m", (1, 8, 8)), ("dit-s/2", (4, 8, 8))])
def test_class_and_alpha_conditioning_change_the_output(name, shape):
    torch.manual_seed(0)
    g = build_generator(name, data_shape=shape, num_classes=10)
    if isinstance(g, DiTGenerator):
        perturb_(g)  # adaLN-zero: at init the blocks ignore the condition by design
    g.eval()
    z = torch.randn(4, g.noise_dim)
    lab = torch.tensor([0, 1, 2, 3])
    one = torch.ones(4)
    base = g(z, lab, one)
    assert not torch.allclose(base, g(z, lab.flip(0), one), atol=1e-4)
    assert not torch.allclose(base, g(z, lab, one * 3.0), atol=1e-4)
    # alpha=None means alpha=1 (no guidance), and a scalar alpha broadcasts
    assert torch.equal(base, g(z, lab, None))
    assert torch.allclose(g(z, lab, torch.tensor(2.5)), g(z, lab, torch.full((4,), 2.5)))
    # one sample's output depends only on its own noise / label / alpha
    assert torch.allclose(g(z[:1], lab[:1], one[:1]), base[:1], atol=1e-5)


def test_labels_none_only_for_unconditional_generators():
    g = build_generator("mlp", data_shape=(2,), num_classes=1)
    z = torch.randn(5, g.noise_dim)
    assert torch.equal(g(z, None, None), g(z, torch.zeros(5, dtype=torch.long), torch.ones(5)))
    cond = build_generator("conv-s", data_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="labels are required"):
        cond(torch.randn(2, cond.noise_dim), None, None)


@pytest.mark.parametrize(
    "name,shape,kwargs",
    [
        ("mlp", (2,), {}),
        ("conv-s", (1, 16, 16), {}),
        ("conv-m", (4, 8, 8), {"widths": (32, 16), "cond_dim": 32}),
        ("dit-s/2", (4, 8, 8), {"hidden": 64, "depth": 2, "style_tokens": 4, "style_codebook": 4}),
    ],
)
def test_gradient_reaches_every_parameter(name, shape, kwargs):
    torch.manual_seed(0)
    g = build_generator(name, data_shape=shape, num_classes=3, **kwargs)
    if isinstance(g, DiTGenerator):
        perturb_(g)  # zero-initialised gates would block the gradient to the blocks at step 0
    x = call(g, 12)
    (x * torch.randn_like(x)).sum().backward()
    dead = [n for n, p in g.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


def test_conv_s_is_small_and_cheap():
    for shape in [(1, 16, 16), (1, 32, 32), (3, 32, 32)]:
        n = sum(p.numel() for p in build_generator("conv-s", data_shape=shape, num_classes=10).parameters())
        assert n < 1_000_000, (shape, n)


def test_conv_tanh_output_is_bounded():
    g = build_generator("conv-s", data_shape=(1, 8, 8), num_classes=2, output="tanh")
    assert call(g, 8).abs().max() < 1.0
    with pytest.raises(ValueError, match="output"):
        build_generator("conv-s", data_shape=(1, 8, 8), num_classes=2, output="sigmoid")


def test_shapes_a_preset_cannot_make_are_value_errors():
    with pytest.raises(ValueError, match="data_shape"):
        build_generator("conv-s", data_shape=(2,), num_classes=1)
    with pytest.raises(ValueError, match="patch size"):
        build_generator("dit-s/2", data_shape=(1, 7, 7), num_classes=1)


def test_same_seed_same_weights():
    def weights():
        torch.manual_seed(7)
        return build_generator("conv-s", data_shape=(1, 16, 16), num_classes=10).state_dict()

    a, b = weights(), weights()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dit_b2_matches_the_paper_size():
    # built on the meta device: counts parameters without allocating or initialising 130M floats
    with torch.device("meta"):
        g = build_generator("dit-b/2", data_shape=(4, 32, 32), num_classes=1000)
    n = sum(p.numel() for p in g.parameters())
    assert 120e6 < n < 140e6, n  # DiT-B/2 is ~130M
    assert (g.hidden, len(g.blocks), g.blocks[0].attn.heads, g.patch_size) == (768, 12, 12, 2)
    assert g.n_registers == 16 and g.n_style == 32
    assert g.noise_dim == 4 * 32 * 32 + 32  # the noise image plus one coordinate per style token


@pytest.mark.parametrize("name,shape", [("conv-s", (1, 16, 16)), ("dit-s/2", (4, 8, 8))])
def test_bf16_autocast_on_cpu(name, shape):
    g = build_generator(name, data_shape=shape, num_classes=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = call(g, 4)
    assert x.shape == (4, *shape) and torch.isfinite(x.float()).all()
    x.float().square().mean().backward()


def test_alpha_cond_off_ignores_alpha():
    g = build_generator("conv-s", data_shape=(1, 8, 8), num_classes=2, alpha_cond=False)
    z, lab = torch.randn(3, g.noise_dim), torch.tensor([0, 1, 1])
    assert torch.equal(g(z, lab, torch.ones(3)), g(z, lab, torch.full((3,), 4.0)))
