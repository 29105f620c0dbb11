"""Which model answers a request: the champion, the challenger on a sticky share of callers, or both (shadow)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

ABMode = Literal["off", "split", "shadow"]
AB_MODES: tuple[str, ...] = ("off", "split", "shadow")
CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class ABPolicy:
    """``off``: the champion answers everything. ``split``: the challenger answers ``challenger_share`` of
    the callers, the same callers every time (a hash of the caller key). ``shadow``: the champion answers
    and the challenger scores the same request without answering."""

    mode: ABMode = "off"
    challenger_share: float = 0.1
    salt: str = "dc-pipeline-ab"

    def __post_init__(self) -> None:
        if self.mode not in AB_MODES:
            raise ValueError(f"A/B mode must be one of {AB_MODES}, got {self.mode!r}")
        if not 0.0 <= self.challenger_share <= 1.0:
            raise ValueError(f"challenger_share must be in [0, 1], got {self.challenger_share}")

    def bucket(self, caller_key: str) -> float:
        """The caller's fixed position in [0, 1)."""
        digest = hashlib.sha256(f"{self.salt}:{caller_key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def arms(self, caller_key: str, challenger_available: bool) -> tuple[str, tuple[str, ...]]:
        """``(answering arm, arms that score)``; without a challenger everything goes to the champion."""
        if not challenger_available or self.mode == "off":
            return CHAMPION, (CHAMPION,)
        if self.mode == "shadow":
            return CHAMPION, (CHAMPION, CHALLENGER)
        arm = CHALLENGER if self.bucket(caller_key) < self.challenger_share else CHAMPION
        return arm, (arm,)
