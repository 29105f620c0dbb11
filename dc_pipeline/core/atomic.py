"""Files written whole or not at all: a temporary name of the writing process, renamed into place.

A process killed mid-write leaves only its temporary file or folder (``.<name>.tmp-<pid>``), never a
partial file under the final name; the next writer in the same folder removes what dead writers left.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def temporary(target: Path) -> Path:
    """This process's temporary name for ``target``, in the same folder (so the rename is atomic)."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def remove_abandoned(folder: Path) -> list[Path]:
    """Remove the temporary files and folders of writers that are gone (older releases named them
    ``.<name>.tmp``, without a process id); a live writer's stay."""
    removed = []
    for tmp in folder.glob(".*.tmp*"):
        writer = tmp.name.rpartition(".tmp")[2].removeprefix("-")
        if writer and (not writer.isdigit() or process_alive(int(writer))):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` whole: a flushed temporary file renamed over it."""
    tmp = temporary(target)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
