"""Tests for SmallCNN and the deterministic baseline / AugMix trainer (tiny configs, CPU)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.datasets import load_digits

from dc_pipeline.core.ml.networks import SmallCNN
from dc_pipeline.core.ml.training import (
    TrainConfig,
    build_model,
    cosine_lr,
    embed,
    jsd_objective,
    load_weights,
    predict_proba,
    save_weights,
    train,
    weights_sha256,
)

TINY = TrainConfig(epochs=2, width=8, batch_size=32, seed=3)


@pytest.fixture(scope="module")
def digits14() -> tuple[np.ndarray, np.ndarray]:
    """All sklearn digits scaled to [0, 1] and upsampled from 8x8 to 14x14."""
    d = load_digits()
    images = np.clip(ndimage.zoom(d.images / 16.0, (1, 14 / 8, 14 / 8), order=1), 0.0, 1.0)
    return images.astype(np.float32), d.target.astype(np.int64)


def test_small_cnn_shapes() -> None:
    model = SmallCNN(width=8, depth=2, input_size=28).eval()
    x = torch.rand(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    assert model.embed(x).shape == (5, 16)
    assert SmallCNN(in_channels=3, n_classes=4, width=4, depth=3)(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError):
        SmallCNN(depth=3, input_size=4)


def test_cosine_lr_matches_reference_schedule() -> None:
    assert cosine_lr(0, 100, 1.0, 1e-4) == pytest.approx(1.0)
    assert cosine_lr(50, 100, 1.0, 1e-4) == pytest.approx((1.0 + 1e-4) / 2)
    assert cosine_lr(100, 100, 1.0, 1e-4) == pytest.approx(1e-4)


@pytest.mark.parametrize("mode", ["baseline", "augmix"])
def test_training_is_bit_identical_for_a_seed(mode: str, digits14: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits14
    x, y = images[:200], labels[:200]
    config = TrainConfig(epochs=2, width=8, batch_size=32, seed=3)
    first = train(x, y, None, None, config, mode=mode)
    second = train(x, y, None, None, config, mode=mode)
    assert first.weights_sha256 == second.weights_sha256 == weights_sha256(second.state_dict)
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    other = train(x, y, None, None, TrainConfig(**{**config.to_dict(), "seed": 4}), mode=mode)
    assert other.weights_sha256 != first.weights_sha256


def test_global_torch_settings_are_restored(digits14: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits14
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng_state = torch.get_rng_state()
    train(images[:64], labels[:64], None, None, TrainConfig(epochs=1, width=4, threads=1))
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_jsd_objective_decreases_on_a_fixed_batch(digits14: tuple[np.ndarray, np.ndarray]) -> None:
    from dc_pipeline.core.ml.augmix import AugMix, augmix_views

    images, labels = digits14
    x = torch.from_numpy(images[:32])[:, None]
    y = torch.from_numpy(labels[:32])
    clean, aug1, aug2 = augmix_views(x, AugMix(), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = SmallCNN(width=8, depth=2, input_size=14).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    losses = []
    for _ in range(8):
        loss, ce, jsd = jsd_objective(model, clean, aug1, aug2, y, 12.0)
        assert loss.item() == pytest.approx(ce.item() + 12.0 * jsd.item(), rel=1e-5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_safetensors_round_trip_preserves_hash(tmp_path: Path, digits14: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits14
    result = train(images[:96], labels[:96], None, None, TrainConfig(epochs=1, width=4))
    path = tmp_path / "model.safetensors"
    save_weights(result.state_dict, path)
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle
    assert hashlib.sha256(path.read_bytes()).hexdigest() == result.weights_sha256
    loaded = load_weights(path)
    assert weights_sha256(loaded) == result.weights_sha256
    assert list(loaded) == sorted(result.state_dict)
    save_weights(result.state_dict, tmp_path / "with_meta.safetensors", metadata={"run": "x"})
    assert weights_sha256(load_weights(tmp_path / "with_meta.safetensors")) == result.weights_sha256
    a = predict_proba(result.model(), images[:20])
    b = predict_proba(build_model(result.model_kwargs, loaded), images[:20])
    np.testing.assert_array_equal(a, b)


def test_predict_proba_and_embed(digits14: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = digits14
    torch.manual_seed(0)
    model = SmallCNN(width=8, depth=2, input_size=14).train()
    probs = predict_proba(model, images[:50], batch_size=16)
    assert probs.shape == (50, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()
    assert model.training  # mode restored
    emb = embed(model, images[:50])
    assert emb.shape == (50, model.embedding_dim) == (50, 16)


def test_baseline_learns_digits(digits14: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits14
    seen: list[dict] = []
    config = TrainConfig(epochs=4, width=8, batch_size=32, lr=0.05, seed=0)
    result = train(images[:600], labels[:600], images[1400:], labels[1400:], config, on_epoch=seen.append)
    assert seen == result.history and [h["epoch"] for h in seen] == [1, 2, 3, 4]
    assert set(seen[0]) >= {"epoch", "loss", "val_error", "images_per_sec", "seconds"}
    assert result.history[-1]["lr"] < config.lr * 0.01
    probs = predict_proba(result.model(), images[1400:])
    error = float(np.mean(probs.argmax(axis=1) != labels[1400:]))
    assert error == pytest.approx(result.history[-1]["val_error"])
    assert error < 0.3  # chance is 0.9


def test_invalid_inputs(digits14: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits14
    with pytest.raises(ValueError):
        train(images[:10], labels[:10], None, None, TINY, mode="mixup")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        train(images[:10], labels[:9], None, None, TINY)
    with pytest.raises(ValueError):
        train(images[:10], labels[:10] + 10, None, None, TINY)


def test_the_training_device_is_resolved_recorded_and_never_silently_swapped():
    import torch

    from dc_pipeline.core.ml.training import training_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert training_device("auto").type == expected
    assert training_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="not one of"):
        training_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            training_device("cuda")
    x = np.random.default_rng(0).random((40, 8, 8), dtype=np.float32)
    y = np.arange(40) % 4
    result = train(x, y, None, None, TrainConfig(epochs=1, width=4, n_classes=4, batch_size=20, device="auto"))
    assert result.config.device == expected  # the registry records where it ran
    assert all(t.device.type == "cpu" for t in result.state_dict.values())


def test_training_logs_start_epoch_k_of_n_with_rate_and_time_left_and_end(
    digits14: tuple[np.ndarray, np.ndarray],
) -> None:
    images, labels = digits14
    lines: list[str] = []
    config = TrainConfig(epochs=3, width=4, batch_size=32, seed=0, device="cpu")
    result = train(images[:96], labels[:96], images[96:128], labels[96:128], config, log=lines.append, name="tiny")
    assert len(lines) == 1 + 3 + 1, lines
    assert lines[0] == "training tiny: 3 epochs over 96 images (validation 32) on cpu"
    for k, line in enumerate(lines[1:4], start=1):
        assert line.startswith(f"tiny epoch {k}/3: train loss "), line
        assert "val error " in line and "images/s" in line and "elapsed" in line, line
    assert "left" in lines[1] and "left" in lines[2] and "left" not in lines[3]  # no estimate once done
    assert lines[4].startswith("trained tiny: 3 epochs in ") and lines[4].endswith("images/s on average")
    assert result.seconds >= sum(h["seconds"] for h in result.history) > 0
    assert result.images_per_second == pytest.approx(3 * 96 / sum(h["seconds"] for h in result.history))
    quiet = train(images[:96], labels[:96], None, None, config)  # no log: same weights, no validation needed
    assert quiet.weights_sha256 == result.weights_sha256
