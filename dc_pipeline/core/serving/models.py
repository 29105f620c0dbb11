"""The models behind the registry's aliases, reloaded when an alias moves, never with unverified weights."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dc_pipeline.core.ml.inference import LoadedModel, preprocess


@dataclass(frozen=True)
class ServedModel:
    """One loaded version: its weights verified, its automation threshold from the registry's metrics."""

    alias: str
    model: LoadedModel
    loaded_at: float

    @property
    def version_id(self) -> str:
        return self.model.version_id

    @property
    def threshold(self) -> float | None:
        """Confidence at or above which a prediction is auto-accepted (None: every prediction goes to review)."""
        value = (self.model.record.get("metrics") or {}).get("automation_threshold")
        return None if value is None or not np.isfinite(float(value)) else float(value)

    def score(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities ``[N, K]`` for uint8 images of any sizes, with the training preprocessing."""
        size = self.model.input_size
        canonical = np.concatenate([preprocess(image[None], size) for image in images])
        return self.model.predict_canonical(canonical)


@dataclass
class AliasFollower:
    """Keeps ``served[alias]`` on the version each alias points to.

    ``resolve(alias)`` names the version (None: the alias points nowhere yet) and ``load(version)`` loads it,
    refusing weights whose sha256 does not match the registry. A failure (the warehouse busy, weights
    tampered with) keeps the model already served and is reported in ``errors`` until a refresh succeeds.
    """

    resolve: Callable[[str], str | None]
    load: Callable[[str], LoadedModel]
    aliases: tuple[str, ...] = ("champion", "challenger")
    served: dict[str, ServedModel] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self) -> dict[str, str | None]:
        """Follow every alias once; returns the version served per alias."""
        with self._lock:
            for alias in self.aliases:
                try:
                    version = self.resolve(alias)
                    if version is None:
                        self.served.pop(alias, None)
                    elif alias not in self.served or self.served[alias].version_id != version:
                        self.served[alias] = ServedModel(alias, self.load(version), time.time())
                    self.errors.pop(alias, None)
                except Exception as exc:  # keep serving what was loaded; say why the move was not followed
                    self.errors[alias] = f"{type(exc).__name__}: {exc}"
            return {alias: (m.version_id if (m := self.served.get(alias)) else None) for alias in self.aliases}
