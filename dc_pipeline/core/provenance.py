"""The code version every row, dataset and model records: git commit and dirty flag when available."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_hash() -> str:
    """sha256 over the package's Python sources and contracts, for installs without git."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(PACKAGE_DIR)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, object]:
    """``{"commit", "dirty", "source_sha256", "label"}``; ``label`` is what rows carry."""
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", str(PACKAGE_DIR))) if commit else None
    src = source_hash()
    label = f"{commit[:12]}{'-dirty' if dirty else ''}" if commit else f"src-{src[:12]}"
    return {"commit": commit, "dirty": dirty, "source_sha256": src, "label": label}
