"""The landing zone: which batches are complete, and the fingerprint of each (its manifest's sha256).

The landing sensor, the headless ``materialize`` command and the tests all scan through here. The scan
never follows a link and never opens anything but a regular file (a FIFO or a device in the landing
zone is only ever ``lstat``-ed), so one odd entry cannot hang it or stop the other batches.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dc_pipeline.core.data.contracts import ManifestLimits
from dc_pipeline.core.data.manifests import SUCCESS_MARKER, delivery_fingerprint, text_problem
from dc_pipeline.core.data.safe_files import BatchFolder, UnsafeFile


@dataclass(frozen=True)
class LandedBatch:
    source: str
    batch_id: str
    manifest_sha256: str  # the manifest's sha256, or the fingerprint of a delivery ingestion will refuse

    @property
    def key(self) -> str:
        return f"{self.source}/{self.batch_id}"


def _entries(folder: Path, what: str, warn: Callable[[str], None]) -> list[str]:
    """Names of the real sub-folders of ``folder`` (links and other entries skipped with a warning)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        warn(f"skipping {what}: cannot list it ({exc})")
        return []
    names = []
    for entry in entries:
        label = f"{what}/{entry.name!r}"
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError as exc:
            warn(f"skipping {label}: cannot stat it ({exc})")
            continue
        if stat.S_ISLNK(mode):
            warn(f"skipping {label}: a link (links in the landing zone are never followed)")
        elif not stat.S_ISDIR(mode):
            if not stat.S_ISREG(mode):
                warn(f"skipping {label}: not a folder (a FIFO, device or socket)")
        elif text_problem(entry.name, ManifestLimits(), one_line=True) is not None or "/" in entry.name:
            warn(f"skipping {label}: the folder name is not valid text")
        else:
            names.append(entry.name)
    return names


def scan_landing(
    landing: Path,
    manifest_files: dict[str, str],
    warn: Callable[[str], None] = print,
    sources: Iterable[str] | None = None,
    limits: ManifestLimits | None = None,
) -> list[LandedBatch]:
    """Complete batches (``_SUCCESS`` present) of each source, in batch-id order. A source or batch folder
    that is a link or not a folder, and a batch whose marker or manifest is missing, a link or not a
    regular file, are skipped with a warning. A manifest past the size bound is listed (its fingerprint
    names the refusal), so ingestion records why it is refused."""
    limits = limits or ManifestLimits()
    found = []
    landing = Path(landing)
    if not landing.is_dir():
        return found
    wanted = set(sources if sources is not None else manifest_files)
    for source in _entries(landing, "landing", warn):
        if source not in wanted or source not in manifest_files:
            continue
        manifest_file = manifest_files[source]
        for batch_id in _entries(landing / source, source, warn):
            try:
                with BatchFolder.open(landing, source, batch_id) as folder:
                    marker, manifest = folder.kind(SUCCESS_MARKER), folder.kind(manifest_file)
                    if marker == "missing":
                        continue  # still being delivered: looked at again on the next scan
                    if marker != "file" or manifest != "file":
                        what = (
                            f"{SUCCESS_MARKER} is a {marker}"
                            if marker != "file"
                            else f"{manifest_file} is a {manifest}"
                        )
                        warn(f"skipping {source}/{batch_id}: {what}, not a regular file (never followed or opened)")
                        continue
                    sha = delivery_fingerprint(folder, manifest_file, limits)
            except (OSError, UnsafeFile) as exc:
                warn(f"skipping {source}/{batch_id}: cannot read it ({exc})")
                continue
            found.append(LandedBatch(source, batch_id, sha))
    return found


def batch_run_key(source: str, batch_id: str, manifest_sha256: str) -> str:
    """An unchanged batch never runs twice; a re-delivered, changed one runs again."""
    return f"{source}:{batch_id}:{manifest_sha256[:16]}"
