"""Tests for the procedural corruption benchmark on real (upsampled) digits."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage
from sklearn.datasets import load_digits

from dc_pipeline.core.ml.corruptions import (
    CORRUPTIONS,
    FAMILIES,
    SEVERITIES,
    Corruption,
    corrupt,
    corruption_table_markdown,
)


@pytest.fixture(scope="module")
def digits28() -> np.ndarray:
    """64 sklearn digits scaled to [0, 1] and upsampled from 8x8 to 28x28."""
    images = load_digits().images[:64] / 16.0
    up = ndimage.zoom(images, (1, 28 / 8, 28 / 8), order=1)
    return np.clip(up, 0.0, 1.0).astype(np.float32)


def test_registry_covers_families_and_severities() -> None:
    assert len(CORRUPTIONS) >= 12
    assert {c.family for c in CORRUPTIONS.values()} == set(FAMILIES)
    for name, c in CORRUPTIONS.items():
        assert isinstance(c, Corruption)
        assert c.name == name
        assert len(c.params) == len(SEVERITIES)
        assert c.description and c.param_label


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_changes_image_and_keeps_contract(name: str, digits28: np.ndarray) -> None:
    diffs = []
    for severity in SEVERITIES:
        out = corrupt(digits28, name, severity, seed=7)
        assert out.shape == digits28.shape
        assert out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.isfinite(out).all()
        diffs.append(float(np.abs(out - digits28).mean()))
    assert min(diffs) > 1e-3, diffs
    assert diffs[-1] > diffs[0], diffs


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_is_deterministic_given_seed(name: str, digits28: np.ndarray) -> None:
    a = corrupt(digits28, name, 3, seed=11)
    b = corrupt(digits28, name, 3, seed=11)
    np.testing.assert_array_equal(a, b)
    rng_a = np.random.default_rng(5)
    rng_b = np.random.default_rng(5)
    np.testing.assert_array_equal(CORRUPTIONS[name](digits28, 2, rng_a), CORRUPTIONS[name](digits28, 2, rng_b))


def test_random_corruptions_depend_on_seed(digits28: np.ndarray) -> None:
    a = corrupt(digits28, "gaussian_noise", 3, seed=1)
    b = corrupt(digits28, "gaussian_noise", 3, seed=2)
    assert not np.array_equal(a, b)


def test_severity_monotone_on_average(digits28: np.ndarray) -> None:
    """Averaged over all corruptions, each severity moves the images further from the clean ones."""
    mean_diff = [
        np.mean([np.abs(corrupt(digits28, n, s, seed=3) - digits28).mean() for n in CORRUPTIONS]) for s in SEVERITIES
    ]
    assert all(b > a for a, b in zip(mean_diff, mean_diff[1:])), mean_diff


@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 32, 20), (1, 40, 40)])
def test_other_image_sizes(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    images = rng.random(shape, dtype=np.float32)
    for name in CORRUPTIONS:
        out = corrupt(images, name, 5, seed=0)
        assert out.shape == shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_bad_inputs_rejected(digits28: np.ndarray) -> None:
    with pytest.raises(ValueError):
        corrupt(digits28, "fog", 0, seed=0)
    with pytest.raises(ValueError):
        corrupt(digits28, "fog", 6, seed=0)
    with pytest.raises(ValueError):
        corrupt(digits28[0], "fog", 1, seed=0)
    with pytest.raises(KeyError):
        corrupt(digits28, "no_such_corruption", 1, seed=0)
    assert corrupt(digits28[:0], "fog", 1, seed=0).shape == (0, 28, 28)


def test_full_benchmark_is_fast(digits28: np.ndarray) -> None:
    images = np.concatenate([digits28] * 5)[:300]
    start = time.perf_counter()
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            corrupt(images, name, severity, seed=severity)
    assert time.perf_counter() - start < 20.0


def test_table_lists_every_corruption() -> None:
    table = corruption_table_markdown()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(CORRUPTIONS)
    for name, c in CORRUPTIONS.items():
        row = next(line for line in lines if line.startswith(f"| {name} |"))
        assert c.family in row and row.count("|") == 10
