"""Tests of the batched AugMix engine against per-image PIL references and the paper's sampling."""

from __future__ import annotations

import dataclasses
import functools
import pickle
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from sklearn.datasets import load_digits

from dc_pipeline.augmix import ALL_OPS, OPS, AugMix, augmix_views, jsd_loss
from dc_pipeline.core.ml.augmix import AugMixParams, apply_op, fused, reference, sample_gamma
from dc_pipeline.core.ml.augmix.engine import _KEY

LUT_OPS = ("autocontrast", "equalize", "posterize", "solarize")
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
ENHANCE_OPS = ("color", "contrast", "brightness", "sharpness")
BACKENDS = ("torch", "fused")  # eager PyTorch (any device) and the compiled per-image loop (CPU)


# --------------------------------------------------------------------------- data


def _digits_pil(n: int) -> list[Image.Image]:
    """Real sklearn digits (8x8, 0..16) upscaled to 28x28 grayscale PIL images."""
    images = load_digits().images[:n]
    return [
        Image.fromarray(np.round(im * 255.0 / 16.0).astype(np.uint8)).resize((28, 28), Image.BILINEAR) for im in images
    ]


def _coloured_pil(n: int) -> list[Image.Image]:
    """Digits coloured with seeded random foreground/background colours plus noise, 32x32 RGB."""
    rng = np.random.default_rng(7)
    out = []
    for im in _digits_pil(n):
        a = np.asarray(im.resize((32, 32), Image.BILINEAR), dtype=np.float64)[..., None] / 255.0
        fg, bg = rng.uniform(0, 1, 3), rng.uniform(0.2, 1, 3)  # non-black background exposes fill errors
        rgb = a * fg + (1 - a) * bg + rng.normal(0.0, 0.03, (32, 32, 3))
        out.append(Image.fromarray(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)))
    return out


def _to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    if arr.ndim == 3:
        arr = arr[:, None]
    else:
        arr = arr.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr))


@pytest.fixture(scope="module")
def gray() -> tuple[list[Image.Image], torch.Tensor]:
    images = _digits_pil(24)
    return images, _to_tensor(images)


@pytest.fixture(scope="module")
def rgb() -> tuple[list[Image.Image], torch.Tensor]:
    images = _coloured_pil(16)
    return images, _to_tensor(images)


# --------------------------------------------------------------------------- per-image PIL reference
# The ops of google-research/augmix augmentations.py (``reference.apply_op``), stacked into a batch.


def pil_batch(images: list[Image.Image], name: str, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    return _to_tensor([reference.apply_op(im, name, float(lv), int(sg)) for im, lv, sg in zip(images, levels, signs)])


# --------------------------------------------------------------------------- every op against PIL
# Tolerances, in 8-bit steps (1/255):
# * 8-bit ops (autocontrast, equalize, posterize, solarize): exact (max diff < 1e-6).
# * geometric ops: PIL truncates its bilinear result to uint8 while the engine keeps the
#   float, so the engine is 0 to 1 step above PIL: max diff <= 1 step, mean diff <= 0.6 step.
#   Fill (0 outside the image) and edge clamping must match exactly: the RGB images have
#   non-black backgrounds, where a wrong fill would differ by far more than 1 step.
# * enhance ops: PIL rounds its degenerate image and truncates the blend: max diff <= 2
#   steps, mean diff <= 0.75 step.
TOLERANCES = {**dict.fromkeys(LUT_OPS, (1e-06, 1e-06)), **dict.fromkeys(GEOMETRIC_OPS, (1.0, 0.6))}
TOLERANCES.update(dict.fromkeys(ENHANCE_OPS, (2.0, 0.75)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ALL_OPS)
def test_op_matches_pil_reference(name: str, channels: int, gray, rgb, backend: str) -> None:
    images, x = gray if channels == 1 else rgb
    g = torch.Generator().manual_seed(1000 + ALL_OPS.index(name))
    b = x.shape[0]
    levels = 0.1 + 9.9 * torch.rand(b, generator=g, dtype=torch.float64)  # the whole severity range
    signs = torch.where(torch.arange(b) % 2 == 0, 1.0, -1.0)  # both directions
    ours = apply_op(x, name, levels, signs, backend=backend)
    ref = pil_batch(images, name, levels, signs)
    diff = (ours - ref).abs() * 255.0
    max_tol, mean_tol = TOLERANCES[name]
    assert ours.shape == x.shape and ours.dtype == x.dtype
    assert diff.max().item() <= max_tol + 1e-3, f"{name}: max diff {diff.max().item():.3f} steps"
    assert diff.mean().item() <= mean_tol, f"{name}: mean diff {diff.mean().item():.3f} steps"
    if name in GEOMETRIC_OPS:
        assert (ours >= ref - 1e-6).all(), "PIL truncates: the engine must never be below it"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", GEOMETRIC_OPS)
def test_geometric_ops_on_non_square_noise(name: str, backend: str) -> None:
    """Uniform noise is the hardest case for interpolation; 24x40 checks the x/y conventions."""
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)) for _ in range(8)]
    levels = torch.linspace(0.5, 9.5, 8, dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0] * 4)
    diff = (
        apply_op(_to_tensor(images), name, levels, signs, backend=backend) - pil_batch(images, name, levels, signs)
    ).abs() * 255
    max_tol, mean_tol = TOLERANCES[name]
    assert diff.max().item() <= max_tol + 1e-3 and diff.mean().item() <= mean_tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["translate_x", "translate_y", "rotate"])
def test_whole_pixel_and_degree_ops_at_the_level_cut_offs(name: str, backend: str) -> None:
    """Levels exactly where the reference's ``int(level * maxval / 10)`` steps up, and beyond.

    20 / 3 and 28 / 3 are not exact in binary, so a cut-off computed in float32 would
    shift the noise by one pixel here. Translations are exact copies (0 outside), also
    by more than the image size (level 40); level 0.1 rotates by 0 degrees, a copy.
    """
    rng = np.random.default_rng(6)
    h, w = 20, 28
    if name == "rotate":
        cut_offs = [k / 3 for k in range(31)]  # int(level * 30 / 10) = k degrees
    else:
        size = w if name == "translate_x" else h
        cut_offs = [k * 30.0 / size for k in range(1, size // 3 + 2)]  # int(level * size / 3 / 10) = k pixels
    levels = torch.tensor([0.1, *cut_offs, 40.0], dtype=torch.float64)
    signs = torch.where(torch.arange(levels.numel()) % 2 == 0, 1.0, -1.0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(levels.numel())]
    diff = (
        apply_op(_to_tensor(images), name, levels, signs, backend=backend) - pil_batch(images, name, levels, signs)
    ).abs() * 255
    max_tol, mean_tol = TOLERANCES[name] if name == "rotate" else (0.0, 0.0)
    assert diff.max().item() <= max_tol + 1e-3 and diff.mean().item() <= mean_tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", LUT_OPS)
def test_8bit_ops_quantise_and_handle_flat_images(name: str, rgb, backend: str) -> None:
    images, x = rgb
    levels = torch.linspace(0.1, 9.9, x.shape[0], dtype=torch.float64)  # PIL rejects 0 bits at 10
    ones = torch.ones(x.shape[0])
    ref = pil_batch(images, name, levels, ones)
    # Inputs off the 8-bit grid by less than half a step are quantised to round(255 x) first.
    jitter = (torch.rand(x.shape, generator=torch.Generator().manual_seed(8)) - 0.5) * (0.9 / 255.0)
    ours = apply_op((x + jitter).clamp(0, 1), name, levels, ones, backend=backend)
    assert (ours - ref).abs().max().item() < 1e-6
    # Flat channels and two-level images: PIL's degenerate branches (identity LUTs).
    flat = [Image.new("RGB", (32, 32), (120, 60, 200)), Image.new("L", (32, 32), 77).convert("RGB")]
    two = np.full((32, 32, 3), 40, np.uint8)
    two[:5] = 41
    flat.append(Image.fromarray(two))
    lv = torch.full((3,), 2.0, dtype=torch.float64)
    assert torch.equal(
        apply_op(_to_tensor(flat), name, lv, torch.ones(3), backend=backend), pil_batch(flat, name, lv, torch.ones(3))
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_change_the_images(rgb, backend: str) -> None:
    """Guards the reference comparison against an op that silently does nothing."""
    _, x = rgb
    levels = torch.full((x.shape[0],), 8.0)
    for name in ALL_OPS:
        out = apply_op(x, name, levels, sign=1.0, backend=backend)
        assert (out - x).abs().max().item() > 8 / 255, name


def test_grayscale_color_is_identity(gray) -> None:
    _, x = gray
    assert torch.allclose(apply_op(x, "color", 2.0), x, atol=1e-6)


def test_apply_op_draws_signs_from_generator(rgb) -> None:
    _, x = rgb
    a = apply_op(x, "rotate", 3.0, generator=torch.Generator().manual_seed(3))
    b = apply_op(x, "rotate", 3.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    plus = apply_op(x, "rotate", 3.0, sign=1.0)
    minus = apply_op(x, "rotate", 3.0, sign=-1.0)
    per_image = [torch.equal(a[i], plus[i]) or torch.equal(a[i], minus[i]) for i in range(x.shape[0])]
    assert all(per_image)
    assert 0 < sum(torch.equal(a[i], plus[i]) for i in range(x.shape[0])) < x.shape[0]


# --------------------------------------------------------------------------- chains and mixing


def _per_image_reference(x: torch.Tensor, augmix: AugMix, params: AugMixParams) -> torch.Tensor:
    """AugMix with a Python loop over images and chains, one ``apply_op`` call per op."""
    return torch.cat(
        [
            reference.augment_and_mix(
                x[b : b + 1],
                *reference.chains_from_params(params, augmix.ops, b),
                op=functools.partial(apply_op, backend=augmix.backend),
            )
            for b in range(x.shape[0])
        ]
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels,all_ops", [(1, False), (3, True)])
def test_batched_engine_equals_per_image_loop(channels: int, all_ops: bool, gray, rgb, backend: str) -> None:
    _, x = gray if channels == 1 else rgb
    x = x[:10]
    augmix = AugMix(all_ops=all_ops, backend=backend)
    out, params = augmix(x, generator=torch.Generator().manual_seed(5), return_params=True)
    ref = _per_image_reference(x, augmix, params)
    assert torch.allclose(out, ref, atol=2e-5), (out - ref).abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["solarize", "equalize", "rotate", "shear_y"])
def test_width1_depth1_forced_op_is_that_op(name: str, rgb, backend: str) -> None:
    images, x = rgb
    augmix = AugMix(width=1, depth=1, ops=(name,), backend=backend)
    out, p = augmix(x, generator=torch.Generator().manual_seed(11), return_params=True)
    assert torch.all(p.ops == 0) and torch.all(p.depths == 1)
    assert torch.allclose(p.weights, torch.ones_like(p.weights))
    m = p.m.float().view(-1, 1, 1, 1)
    op_out = apply_op(x, name, p.levels[0, 0], p.signs[0, 0], backend=backend)
    assert torch.allclose(out, (1 - m) * x + m * op_out, atol=1e-5)
    # With the skip weight forced to 1 the output is the chain, i.e. the op itself (PIL's).
    chain = augmix.apply(x, dataclasses.replace(p, m=torch.ones_like(p.m)))
    assert torch.allclose(chain, op_out, atol=1e-5)
    pil = pil_batch(images, name, p.levels[0, 0], p.signs[0, 0])
    assert (chain - pil).abs().max().item() * 255 <= TOLERANCES[name][0] + 1e-3
    # ... and with m forced to 0 it is the clean image.
    clean = augmix.apply(x, dataclasses.replace(p, m=torch.zeros_like(p.m)))
    assert torch.allclose(clean, x, atol=1e-6)


def test_mixing_weights_are_convex_and_follow_dirichlet_beta(rgb) -> None:
    _, x = rgb
    _, p = AugMix()(x, generator=torch.Generator().manual_seed(0), return_params=True)
    assert p.weights.shape == (x.shape[0], 3) and p.m.shape == (x.shape[0],)
    assert torch.allclose(p.weights.sum(dim=1), torch.ones(x.shape[0], dtype=p.weights.dtype), atol=1e-9)
    assert (p.weights >= 0).all() and (p.weights <= 1).all()
    assert (p.m >= 0).all() and (p.m <= 1).all()
    # Distributions over many images: Beta(1, 1) is uniform, Dirichlet(1, 1, 1) has
    # Beta(1, 2) marginals; with alpha = 0.5 the Gamma sampler takes its boost branch.
    for alpha in (1.0, 0.5):
        p = AugMix(alpha=alpha).sample_params(4000, torch.Generator().manual_seed(1))
        assert stats.kstest(p.m.numpy(), stats.beta(alpha, alpha).cdf).pvalue > 1e-3
        assert stats.kstest(p.weights[:, 0].numpy(), stats.beta(alpha, 2 * alpha).cdf).pvalue > 1e-3
    for concentration in (0.3, 1.0, 2.5):
        g = sample_gamma(concentration, (20000,), torch.Generator().manual_seed(2))
        assert stats.kstest(g.numpy(), stats.gamma(concentration).cdf).pvalue > 1e-3


def test_op_and_depth_frequencies_are_uniform() -> None:
    augmix = AugMix()
    p = augmix.sample_params(3000, torch.Generator().manual_seed(3))
    active = torch.arange(3).view(3, 1, 1) < p.depths.unsqueeze(0)
    counts = torch.bincount(p.ops[active], minlength=len(OPS)).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3, counts
    depth_counts = torch.bincount(p.depths.view(-1), minlength=4)[1:].numpy()
    assert stats.chisquare(depth_counts).pvalue > 1e-3, depth_counts
    levels = p.levels.view(-1).numpy()
    assert levels.min() >= 0.1 and levels.max() <= 3.0
    assert stats.kstest(levels, stats.uniform(0.1, 2.9).cdf).pvalue > 1e-3
    assert stats.binomtest(int((p.signs > 0).sum()), p.signs.numel()).pvalue > 1e-3
    all_counts = torch.bincount(AugMix(all_ops=True).sample_params(2000, torch.Generator()).ops.view(-1))
    assert all_counts.numel() == len(ALL_OPS) and (all_counts > 0).all()


def test_images_of_one_batch_are_augmented_independently(gray) -> None:
    _, x = gray
    batch = x[:1].expand(64, -1, -1, -1).contiguous()  # one image, 64 times
    out, p = AugMix()(batch, generator=torch.Generator().manual_seed(4), return_params=True)
    first_ops = p.ops[0, 0]
    assert len(set(first_ops.tolist())) == len(OPS)  # every op appears for the same image
    assert (p.ops[:, :, 0] != p.ops[:, :, 1]).any()
    assert not torch.allclose(p.m[0], p.m[1])
    distinct = {tuple(out[i].flatten()[:200].tolist()) for i in range(64)}
    assert len(distinct) == 64


def test_same_seed_same_output_different_seed_different(rgb) -> None:
    _, x = rgb
    augmix = AugMix()
    a = augmix(x, generator=torch.Generator().manual_seed(42))
    b = augmix(x, generator=torch.Generator().manual_seed(42))
    c = augmix(x, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_run_leaves_global_rng_alone(gray) -> None:
    _, x = gray
    torch.manual_seed(123)
    state = torch.get_rng_state()
    AugMix(all_ops=True)(x, generator=torch.Generator().manual_seed(0))
    apply_op(x, "rotate", 2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (4, 3, 32, 32), (3, 3, 20, 36)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_range_are_preserved(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(9), dtype=dtype)
    out = AugMix(all_ops=True)(x, generator=torch.Generator().manual_seed(9))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)


def test_reused_scratch_buffers_do_not_leak_between_calls(rgb, gray) -> None:
    """An instance keeps scratch tensors between calls: results must not depend on earlier calls."""
    _, x3 = rgb
    _, x1 = gray
    seed = 21
    fresh = [AugMix()(x, generator=torch.Generator().manual_seed(seed)) for x in (x3[:4], x1[:7], x3)]
    shared = AugMix()
    shared(x3, generator=torch.Generator().manual_seed(0))  # grow the buffers first
    for x, expected in zip((x3[:4], x1[:7], x3), fresh):
        assert torch.equal(shared(x, generator=torch.Generator().manual_seed(seed)), expected)
    copy = pickle.loads(pickle.dumps(shared))  # DataLoader workers pickle the transform
    assert torch.equal(copy(x3, generator=torch.Generator().manual_seed(seed)), fresh[2])


def test_outputs_can_go_into_a_training_step(rgb) -> None:
    """The engine works in inference mode; its outputs must still be ordinary tensors for autograd."""
    _, x = rgb
    out = AugMix()(x, generator=torch.Generator().manual_seed(6))
    assert not out.is_inference() and not apply_op(x, "rotate", 2.0, 1.0).is_inference()
    weight = torch.randn(2, 3, 3, 3, requires_grad=True)
    torch.nn.functional.conv2d(out, weight).square().mean().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


def test_strided_and_half_inputs(rgb) -> None:
    _, x = rgb
    expected = AugMix()(x, generator=torch.Generator().manual_seed(2))
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(AugMix()(channels_last, generator=torch.Generator().manual_seed(2)), expected)
    half = AugMix()(x.half(), generator=torch.Generator().manual_seed(2))
    assert half.dtype == torch.float16 and (half.float() - expected).abs().mean().item() < 2e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(rgb) -> None:
    _, x = rgb
    augmix = AugMix(all_ops=True)
    params = augmix.sample_params(x.shape[0], torch.Generator().manual_seed(3))
    cpu = augmix.apply(x, params)
    gpu = augmix.apply(x.cuda(), params).cpu()
    # Rounding to 8-bit levels may flip at exact half-levels between devices; compare on average.
    assert (gpu - cpu).abs().mean().item() < 1e-3


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        AugMix(ops=("rotate", "blur"))
    with pytest.raises(ValueError):
        AugMix(depth=0)
    with pytest.raises(ValueError):
        AugMix()(torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError):
        apply_op(torch.rand(2, 1, 8, 8), "blur", 1.0)


def test_op_lists_follow_the_paper() -> None:
    assert OPS == (
        "autocontrast", "equalize", "posterize", "rotate", "solarize",
        "shear_x", "shear_y", "translate_x", "translate_y",
    )  # fmt: skip
    assert ALL_OPS == OPS + ("color", "contrast", "brightness", "sharpness")
    assert AugMix().ops == OPS and AugMix(all_ops=True).ops == ALL_OPS


def test_augmix_views_returns_clean_and_two_independent_views(gray) -> None:
    _, x = gray
    clean, a1, a2 = augmix_views(x, AugMix(), generator=torch.Generator().manual_seed(0))
    assert clean is x
    assert a1.shape == x.shape and a2.shape == x.shape
    assert not torch.equal(a1, a2)


# --------------------------------------------------------------------------- JSD loss


def test_jsd_loss_is_zero_for_identical_logits() -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    assert jsd_loss(logits, logits.clone(), logits.clone()).abs().item() < 1e-6


def test_jsd_loss_matches_hand_computation() -> None:
    clean = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    aug1 = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
    aug2 = torch.tensor([[1.0, 1.0, 1.0], [3.0, 0.0, 0.0]])

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ps = [softmax(t.double().numpy()) for t in (clean, aug1, aug2)]
    log_m = np.log(np.clip(sum(ps) / 3.0, 1e-7, 1.0))
    kls = [np.sum(p * (np.log(p) - log_m)) / p.shape[0] for p in ps]  # batchmean
    expected = sum(kls) / 3.0
    got = jsd_loss(clean, aug1, aug2).item()
    assert got > 0
    assert got == pytest.approx(expected, rel=1e-5)
    assert jsd_loss(clean, aug2, aug1).item() == pytest.approx(got, rel=1e-6)


def test_the_reference_registry_names_the_engine_ops():
    from dc_pipeline.core.ml.augmix import reference

    assert tuple(reference.OPS) == OPS and tuple(reference.ALL_OPS) == ALL_OPS


# --------------------------------------------------------------------------- the two backends


def test_fused_op_keys_are_the_engines() -> None:
    assert {name: getattr(fused, name.upper()) for name in ALL_OPS} == _KEY


@pytest.mark.parametrize("channels,all_ops", [(1, False), (3, True)])
def test_fused_and_torch_backends_agree(channels: int, all_ops: bool, gray, rgb) -> None:
    """Same draws, same images: the backends differ by float rounding only.

    An 8-bit op after a warp can round a value on a half level the other way; that
    is one level for that pixel (more after equalize), so the bound is on how rare it is.
    """
    _, x = gray if channels == 1 else rgb
    x = x.repeat(4, 1, 1, 1)
    params = AugMix(all_ops=all_ops).sample_params(x.shape[0], torch.Generator().manual_seed(21))
    eager = AugMix(all_ops=all_ops, backend="torch").apply(x, params)
    compiled = AugMix(all_ops=all_ops, backend="fused").apply(x, params)
    diff = (eager - compiled).abs() * 255
    assert compiled.dtype == eager.dtype and compiled.shape == eager.shape
    assert diff.mean().item() < 1e-3, diff.mean()
    assert (diff > 1e-2).float().mean().item() < 1e-3, (diff > 1e-2).float().mean()


def test_fused_results_do_not_depend_on_threads(rgb) -> None:
    _, x = rgb
    x = x.repeat(3, 1, 1, 1)
    augmix = AugMix(backend="fused")
    params = augmix.sample_params(x.shape[0], torch.Generator().manual_seed(4))
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 5):
            torch.set_num_threads(threads)
            outs.append(augmix.apply(x, params))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_concurrent_callers_get_their_own_results(rgb, gray) -> None:
    """Data loaders may call one engine from several threads at once."""
    augmix = AugMix()
    inputs = [rgb[1], gray[1], rgb[1].flip(-1), gray[1].flip(-2)]
    expected = [augmix(x, generator=torch.Generator().manual_seed(i)) for i, x in enumerate(inputs)]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = augmix(inputs[i], generator=torch.Generator().manual_seed(i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(results[i], expected[i]) for i in range(len(inputs)))


def test_auto_backend_falls_back_for_one_pixel_lines() -> None:
    x = torch.rand(3, 1, 1, 9)
    out = AugMix()(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="at least 2x2"):
        AugMix(backend="fused")(x, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="backend"):
        AugMix(backend="numpy")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_images_are_refused(backend: str, bad: float, gray) -> None:
    x = gray[1][:4].clone()
    x[2, 0, 5, 5] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        AugMix(backend=backend)(x, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        apply_op(x, "equalize", 3.0, 1.0, backend=backend)


def test_params_from_outside_are_checked_before_use(rgb) -> None:
    _, x = rgb
    augmix = AugMix()
    good = augmix.sample_params(x.shape[0], torch.Generator().manual_seed(0))
    broken = {
        "op index": dataclasses.replace(good, ops=good.ops + len(OPS)),
        "depth": dataclasses.replace(good, depths=good.depths + 3),
        "level": dataclasses.replace(good, levels=good.levels.clone().fill_(float("nan"))),
        "shape": dataclasses.replace(good, signs=good.signs[:, :, :2]),
    }
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="finite"):
            apply_op(x, "shear_x", float("nan"), 1.0, backend=backend)
    for params in broken.values():  # unchecked, the fused loop would read out of bounds
        for backend in BACKENDS:
            with pytest.raises(ValueError, match="params"):
                AugMix(backend=backend).apply(x, params)
