"""The landing zone: which batches are complete, and the fingerprint of each (its manifest's sha256).

The landing sensor, the headless ``materialize`` command and the tests all scan through here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from dc_pipeline.core.data.manifests import is_complete


@dataclass(frozen=True)
class LandedBatch:
    source: str
    batch_id: str
    manifest_sha256: str

    @property
    def key(self) -> str:
        return f"{self.source}/{self.batch_id}"


def scan_landing(landing: Path, manifest_files: dict[str, str], warn: Callable[[str], None] = print,
                 sources: Iterable[str] | None = None) -> list[LandedBatch]:
    """Complete batches (``_SUCCESS`` present) of each source, in batch-id order; a batch that cannot be
    read is reported through ``warn`` and skipped, without stopping the others."""
    found = []
    for source in sources if sources is not None else sorted(manifest_files):
        folder = landing / source
        if not folder.is_dir():
            continue
        for batch_dir in sorted(folder.iterdir()):
            try:
                if not batch_dir.is_dir() or not is_complete(batch_dir):
                    continue  # still being delivered: looked at again on the next scan
                sha = hashlib.sha256((batch_dir / manifest_files[source]).read_bytes()).hexdigest()
            except OSError as exc:
                warn(f"skipping {source}/{batch_dir.name}: cannot read it ({exc})")
                continue
            found.append(LandedBatch(source, batch_dir.name, sha))
    return found


def batch_run_key(source: str, batch_id: str, manifest_sha256: str) -> str:
    """An unchanged batch never runs twice; a re-delivered, changed one runs again."""
    return f"{source}:{batch_id}:{manifest_sha256[:16]}"
