"""Deterministic CPU training of ``SmallCNN``: a standard baseline and AugMix with the JSD loss.

Both modes use SGD with Nesterov momentum and a per-step cosine learning-rate schedule, as the
AugMix reference (``cifar.py``: ``LambdaLR`` with ``get_lr(step, total_steps, 1, 1e-6 / lr)``).
The same data, config and seed give bit-identical weights; weights are stored with safetensors only.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dc_pipeline.core.ml.networks import SmallCNN
from dc_pipeline.core.progress import Progress

__all__ = [
    "MODES",
    "SplitReader",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "cosine_lr",
    "embed",
    "jsd_objective",
    "load_weights",
    "predict_proba",
    "save_weights",
    "train",
    "weights_sha256",
]

Mode = Literal["baseline", "augmix"]
MODES: tuple[str, ...] = ("baseline", "augmix")
LR_MIN = 1e-6  # final learning rate of the cosine schedule, as the reference


@dataclass
class TrainConfig:
    """Hyper-parameters. Defaults train ~1,000 28x28 digits to a good accuracy in seconds on 2 cores."""

    epochs: int = 30
    lr: float = 0.05
    batch_size: int = 64
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    width: int = 16
    depth: int = 2
    n_classes: int = 10
    seed: int = 0
    jsd_weight: float = 12.0
    augmix_severity: float = 3.0
    augmix_width: int = 3
    augmix_depth: int = -1
    augmix_alpha: float = 1.0
    augmix_all_ops: bool = False
    threads: int = 2
    device: str = "auto"  # "cpu", "cuda", or "auto": CUDA when this process has it (the accelerator queue's workers)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for metadata and run records)."""
        return asdict(self)


@dataclass
class TrainResult:
    """Trained weights (CPU, contiguous) plus what is needed to rebuild and audit the model.

    ``history`` has one dict per epoch: ``epoch``, ``loss`` (mean training objective), ``ce``, ``jsd``
    (0.0 for the baseline), ``lr`` (after the epoch), ``val_error`` (``None`` without validation
    data), ``images_per_sec`` (training images per second), ``seconds`` (training time) and
    ``eval_seconds``. The result's own ``seconds`` is the wall time of all epochs (validation
    included) and ``images_per_second`` the mean training throughput (images over training time).
    """

    state_dict: dict[str, Tensor]
    history: list[dict[str, Any]]
    config: TrainConfig
    mode: str
    model_kwargs: dict[str, int]
    weights_sha256: str = field(default="")
    seconds: float = 0.0
    images_per_second: float = 0.0

    def model(self) -> SmallCNN:
        """A ``SmallCNN`` with these weights, in eval mode."""
        return build_model(self.model_kwargs, self.state_dict)


def cosine_lr(step: int, total_steps: int, lr_max: float, lr_min: float) -> float:
    """The reference ``get_lr``: cosine from ``lr_max`` at step 0 to ``lr_min`` at ``total_steps``."""
    return lr_min + (lr_max - lr_min) * 0.5 * (1 + math.cos(step / total_steps * math.pi))


def build_model(model_kwargs: dict[str, int], state_dict: dict[str, Tensor] | None = None) -> SmallCNN:
    """``SmallCNN(**model_kwargs)``, loaded with ``state_dict`` if given, in eval mode."""
    model = SmallCNN(**model_kwargs)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.eval()


def _as_nchw(images: np.ndarray | Tensor) -> Tensor:
    t = torch.as_tensor(np.asarray(images, dtype=np.float32)) if not isinstance(images, Tensor) else images.float()
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise ValueError(f"images must be [N, H, W] or [N, C, H, W], got shape {tuple(t.shape)}")
    return t.contiguous()


@contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    """Deterministic algorithms and a fixed thread count; the previous settings and the global RNG
    state are restored on exit."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(True)
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


def jsd_objective(
    model: nn.Module, clean: Tensor, aug1: Tensor, aug2: Tensor, labels: Tensor, jsd_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """AugMix objective ``(loss, ce, jsd)``: one forward pass over the concatenated triple,
    ``loss = cross_entropy(logits_clean, labels) + jsd_weight * jsd``."""
    from dc_pipeline.core.ml.augmix import jsd_loss

    logits_clean, logits_aug1, logits_aug2 = torch.split(model(torch.cat([clean, aug1, aug2])), clean.shape[0])
    ce = F.cross_entropy(logits_clean, labels)
    jsd = jsd_loss(logits_clean, logits_aug1, logits_aug2)
    return ce + jsd_weight * jsd, ce, jsd


class SplitReader(Protocol):
    """A split read minibatch by minibatch (``features.ArrayReader``, ``dataset_store.LanceSplitReader``):
    ``take(indices)`` gives float32 ``[n, H, W]`` in the order of ``indices``."""

    def __len__(self) -> int: ...

    def take(self, indices: np.ndarray) -> np.ndarray: ...


def _is_reader(images) -> bool:
    return hasattr(images, "take") and not isinstance(images, np.ndarray | Tensor)


def training_device(name: str):
    """The torch device ``name`` asks for: ``auto`` is CUDA when available, else the CPU; asking for CUDA on a
    machine without it is an error, not a silent fall-back."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for, but this process sees no CUDA device")
    if name == "cuda":  # cuBLAS is deterministic (as training insists) only with a fixed workspace
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device(name)


def train(
    images: np.ndarray | SplitReader,
    labels: np.ndarray,
    val_images: np.ndarray | SplitReader | None,
    val_labels: np.ndarray | None,
    config: TrainConfig | None = None,
    mode: Mode = "baseline",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
    name: str | None = None,
) -> TrainResult:
    """Train a ``SmallCNN`` on ``images`` ``[N, H, W]`` (float32 in [0, 1]) and int ``labels``.

    ``images`` and ``val_images`` may be split readers instead of arrays (``len`` and ``take(indices)``):
    each minibatch is then taken by index, so memory is bounded by the reader, not the split; the same
    values give bit-identical weights either way. Validation is predicted in batches.

    ``mode="augmix"``: each batch becomes (clean, aug1, aug2) with the AugMix engine, the three go
    through the network in one concatenated pass (shared BatchNorm statistics), and the loss is
    ``cross_entropy(clean) + jsd_weight * jsd(clean, aug1, aug2)``. ``mode="baseline"``: plain
    cross-entropy. Neither stream gets the reference's random crop / flip (wrong for digits), so the
    baseline sees exactly the AugMix model's clean stream.

    Determinism: the weights are initialised from ``torch.manual_seed(seed)``, data order and
    augmentation have their own generators derived from ``seed``; deterministic algorithms and
    ``config.threads`` threads are used during training and the previous settings restored.
    ``on_epoch`` receives each history record as it is written; ``log`` receives short progress lines
    (a start line, ``"<name> epoch 6/30: train loss ..., val error ..., 1,850 images/s, 14 s elapsed,
    about 40 s left"`` per epoch, and an end line with the total time and mean images/s); ``name``
    (default: the mode) names the model in them.
    """
    cfg = config or TrainConfig()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    reader = images if _is_reader(images) else None
    x = _as_nchw(reader.take(np.zeros(min(len(reader), 1), np.int64))) if reader is not None else _as_nchw(images)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    n = len(reader) if reader is not None else x.shape[0]
    if n == 0 or y.shape[0] != n:
        raise ValueError(f"need as many labels as images (> 0), got {n} images and {y.shape[0]} labels")
    if int(y.min()) < 0 or int(y.max()) >= cfg.n_classes:
        raise ValueError(f"labels must lie in [0, {cfg.n_classes})")
    has_val = val_images is not None and val_labels is not None and len(val_labels) > 0
    model_kwargs = {
        "in_channels": int(x.shape[1]),
        "n_classes": cfg.n_classes,
        "width": cfg.width,
        "depth": cfg.depth,
        "input_size": int(min(x.shape[2], x.shape[3])),
    }
    augmix = None
    if mode == "augmix":
        from dc_pipeline.core.ml.augmix import AugMix, augmix_views

        augmix = AugMix(
            severity=cfg.augmix_severity,
            width=cfg.augmix_width,
            depth=cfg.augmix_depth,
            alpha=cfg.augmix_alpha,
            all_ops=cfg.augmix_all_ops,
        )
    data_seed, aug_seed = (int(s) for s in np.random.SeedSequence(cfg.seed).generate_state(2))
    history: list[dict[str, Any]] = []
    with _torch_settings(cfg.threads):
        torch.manual_seed(cfg.seed)
        device = training_device(cfg.device)
        cfg = replace(cfg, device=device.type)  # what the registry records: the device it really ran on
        model = SmallCNN(**model_kwargs).to(device)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
        total_steps = cfg.epochs * math.ceil(n / cfg.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda=lambda step: cosine_lr(step, total_steps, 1.0, LR_MIN / cfg.lr)
        )
        g_data = torch.Generator().manual_seed(data_seed)
        g_aug = torch.Generator().manual_seed(aug_seed)
        label = name or mode
        say = log or (lambda _line: None)
        val_note = f" (validation {len(val_labels):,})" if has_val else ""
        say(f"training {label}: {cfg.epochs} epochs over {n:,} images{val_note} on {device.type}")
        progress = Progress(cfg.epochs, unit="images")
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            start = time.perf_counter()
            sums = {"loss": 0.0, "ce": 0.0, "jsd": 0.0}
            perm = torch.randperm(n, generator=g_data)
            for lo in range(0, n, cfg.batch_size):
                idx = perm[lo : lo + cfg.batch_size]
                xb = (_as_nchw(reader.take(idx.numpy())) if reader is not None else x[idx]).to(device)
                yb = y[idx].to(device)
                if augmix is not None:
                    clean, aug1, aug2 = augmix_views(xb, augmix, generator=g_aug)
                    loss, ce, jsd = jsd_objective(model, clean, aug1, aug2, yb, cfg.jsd_weight)
                else:
                    ce = F.cross_entropy(model(xb), yb)
                    jsd = torch.zeros(())
                    loss = ce
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                b = xb.shape[0]
                sums["loss"] += loss.item() * b
                sums["ce"] += ce.item() * b
                sums["jsd"] += jsd.item() * b
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            val_error = None
            if has_val:
                probs = predict_proba(model, val_images)
                val_error = float(np.mean(probs.argmax(axis=1) != np.asarray(val_labels).reshape(-1)))
            record = {
                "epoch": epoch,
                **{k: v / n for k, v in sums.items()},
                "lr": float(optimizer.param_groups[0]["lr"]),
                "val_error": val_error,
                "images_per_sec": n / seconds if seconds > 0 else float("inf"),
                "seconds": seconds,
                "eval_seconds": time.perf_counter() - start,
            }
            history.append(record)
            progress.step(n, seconds)
            val_text = "" if val_error is None else f", val error {val_error:.1%}"
            say(f"{label} epoch {epoch}/{cfg.epochs}: train loss {record['loss']:.3f}{val_text}, {progress.timing()}")
            if on_epoch is not None:
                on_epoch(record)
        total_seconds = progress.elapsed
        say(f"trained {label}: {cfg.epochs} epochs in {progress.summary()}")
        model.eval()
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    return TrainResult(
        state,
        history,
        cfg,
        mode,
        model_kwargs,
        weights_sha256(state),
        seconds=total_seconds,
        images_per_second=progress.items_per_second,
    )


def _prepared(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: state_dict[k].detach().cpu().contiguous() for k in sorted(state_dict)}


def weights_sha256(state_dict: dict[str, Tensor]) -> str:
    """SHA-256 of the safetensors serialisation (keys sorted, CPU, contiguous, no metadata).

    Equals the SHA-256 of the file ``save_weights`` writes without metadata.
    """
    return hashlib.sha256(safetensors.torch.save(_prepared(state_dict))).hexdigest()


def save_weights(state_dict: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``state_dict`` as a safetensors file (optional string ``metadata`` in its header)."""
    Path(path).write_bytes(safetensors.torch.save(_prepared(state_dict), metadata=metadata))


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file written by ``save_weights`` (CPU tensors, keys sorted)."""
    loaded = safetensors.torch.load(Path(path).read_bytes())
    return {k: loaded[k] for k in sorted(loaded)}


def _batched_outputs(
    model: nn.Module, images: np.ndarray | Tensor | SplitReader, batch_size: int, fn: Callable[[Tensor], Tensor]
) -> np.ndarray:
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    outs: list[np.ndarray] = []
    reader = images if _is_reader(images) else None
    try:
        with torch.inference_mode():
            for lo in range(0, len(images), batch_size):
                hi = min(lo + batch_size, len(images))
                part = reader.take(np.arange(lo, hi)) if reader is not None else images[lo:hi]
                xb = _as_nchw(part).to(device)
                outs.append(fn(xb).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("no images given")
    return np.concatenate(outs)


def predict_proba(model: nn.Module, images: np.ndarray | Tensor | SplitReader, batch_size: int = 512) -> np.ndarray:
    """Softmax probabilities ``[N, n_classes]`` (float32) in eval mode; the model's mode is restored."""
    return _batched_outputs(model, images, batch_size, lambda xb: F.softmax(model(xb), dim=1))


def embed(model: SmallCNN, images: np.ndarray | Tensor, batch_size: int = 512) -> np.ndarray:
    """Penultimate embeddings ``[N, embedding_dim]`` (float32) in eval mode."""
    return _batched_outputs(model, images, batch_size, model.embed)
