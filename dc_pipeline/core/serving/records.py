"""Single labelled records turned into landing batches (micro-batches) in a source's own contract format.

Each record is staged on disk as it arrives (its image file and one JSON line) under
``<landing>/.service-staging/<source>/<batch id>/``, outside every source folder, so nothing is lost if the
service stops. A micro-batch closes after ``max_records`` records or ``max_seconds`` after its first: the
manifest is written in the contract's format (file name, columns, label and timestamp conventions), then
the ``_SUCCESS`` marker, and the folder is renamed into ``<landing>/<source>/`` in one step. From there it
goes through the same landing sensor, contract, checks, cleaning and accounting as any delivery. Batches
left staged by a stopped service are closed when the next one starts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dc_pipeline.core.data.contracts import SourceContract
from dc_pipeline.core.data.manifests import SUCCESS_MARKER

STAGING = ".service-staging"
STAGED_RECORDS = "records.jsonl"


class RecordContractError(ValueError):
    """The source's contract cannot carry records written by the service."""


@dataclass(frozen=True)
class ManifestLayout:
    """How a record becomes a manifest row of one contract: physical column names and value conventions."""

    contract: SourceContract

    @classmethod
    def of(cls, contract: SourceContract) -> ManifestLayout:
        if contract.kind != "images" or contract.image_kind != "path":
            raise RecordContractError(
                f"{contract.source}: records need an image source whose images are files named in the manifest"
            )
        if contract.manifest_format not in ("csv", "jsonl", "parquet"):
            raise RecordContractError(f"{contract.source}: manifest format {contract.manifest_format} is not written")
        filled = {"record_id", "image", "label", "captured_at"}
        unfillable = [c.name for c in contract.columns if c.field not in filled and not c.nullable]
        if unfillable:
            raise RecordContractError(f"{contract.source}: required columns the service cannot fill: {unfillable}")
        label = contract.column_for("label")
        if label is None or not (
            (contract.label_class_ids and "integer" in label.types) or (contract.label_map and "string" in label.types)
        ):
            raise RecordContractError(f"{contract.source}: its label column cannot carry a class id")
        return cls(contract)

    def label_value(self, class_id: int) -> Any:
        label = self.contract.column_for("label")
        assert label is not None
        if self.contract.label_class_ids and "integer" in label.types:
            return int(class_id)
        names = [name for name, value in self.contract.label_map.items() if value == class_id]
        if not names:
            raise RecordContractError(f"{self.contract.source}: no label name maps to class {class_id}")
        return names[0]

    def record_id_value(self, sequence: int) -> Any:
        column = self.contract.column_for("record_id")
        if column is not None and "string" in column.types:
            return f"svc-{uuid.uuid4().hex[:16]}"
        return int(time.time() * 1000) * 1000 + sequence % 1000  # integer ids: time-ordered, unique per process

    def timestamp_value(self, at: dt.datetime) -> Any:
        fmt = self.contract.timestamp_format
        if fmt == "iso8601":
            return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        if fmt == "epoch_ms":
            return int(at.timestamp() * 1000)
        if fmt == "epoch_s":
            return int(at.timestamp())
        from zoneinfo import ZoneInfo

        return at.astimezone(ZoneInfo(self.contract.timestamp_timezone)).strftime(fmt)

    def manifest_row(self, record: dict) -> dict:
        values = {
            "record_id": record["record_id"],
            "image": record["image"],
            "label": record["label"],
            "captured_at": record["captured_at"],
        }
        return {c.name: values.get(c.field) for c in self.contract.columns}

    def write_manifest(self, folder: Path, records: list[dict]) -> None:
        import pandas as pd

        frame = pd.DataFrame([self.manifest_row(r) for r in records], columns=[c.name for c in self.contract.columns])
        target = folder / self.contract.manifest_file
        if self.contract.manifest_format == "csv":
            frame.to_csv(target, index=False)
        elif self.contract.manifest_format == "jsonl":
            frame.to_json(target, orient="records", lines=True)
        else:
            frame.to_parquet(target, index=False)


class MicroBatchWriter:
    """Stages records for one source and closes them into landing batches after N records or T seconds."""

    def __init__(self, landing: Path, contract: SourceContract, max_records: int = 100, max_seconds: float = 30.0):
        if max_records < 1 or max_seconds <= 0:
            raise ValueError("max_records must be >= 1 and max_seconds > 0")
        self.layout = ManifestLayout.of(contract)
        self.landing = Path(landing)
        self.source = contract.source
        self.max_records = max_records
        self.max_seconds = max_seconds
        self.staging = self.landing / STAGING / self.source
        self._lock = threading.Lock()
        self._open: Path | None = None
        self._count = 0
        self._opened_at = 0.0
        self._sequence = 0

    def recover(self) -> list[str]:
        """Close the batches a stopped service left staged; returns their batch ids."""
        closed = []
        with self._lock:
            if self.staging.is_dir():
                for folder in sorted(p for p in self.staging.iterdir() if p.is_dir() and not p.is_symlink()):
                    if self._close(folder):
                        closed.append(folder.name)
        return closed

    def add(self, image: bytes, suffix: str, class_id: int, captured_at: dt.datetime | None = None) -> dict:
        """Stage one record; returns its record id and the batch it will land in."""
        with self._lock:
            if self._open is None:
                batch_id = f"svc-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}"
                self._open = self.staging / batch_id
                (self._open / "images").mkdir(parents=True)
                self._count, self._opened_at = 0, time.monotonic()
            self._sequence += 1
            record_id = self.layout.record_id_value(self._sequence)
            name = f"images/{self._count:06d}{suffix}"
            (self._open / name).write_bytes(image)
            record = {
                "record_id": record_id,
                "image": name,
                "label": self.layout.label_value(class_id),
                "captured_at": self.layout.timestamp_value(captured_at or dt.datetime.now(dt.UTC)),
            }
            with open(self._open / STAGED_RECORDS, "a", encoding="utf-8") as staged:
                staged.write(json.dumps(record) + "\n")
                staged.flush()
                os.fsync(staged.fileno())
            self._count += 1
            batch_id = self._open.name
            if self._count >= self.max_records:
                self._close(self._open)
                self._open = None
            return {"record_id": record_id, "batch_id": batch_id}

    def close_if_due(self) -> str | None:
        """Close the open batch when its first record is ``max_seconds`` old; returns its batch id."""
        with self._lock:
            if self._open is None or time.monotonic() - self._opened_at < self.max_seconds:
                return None
            folder, self._open = self._open, None
            return folder.name if self._close(folder) else None

    def close(self) -> str | None:
        """Close the open batch now (at shutdown)."""
        with self._lock:
            if self._open is None:
                return None
            folder, self._open = self._open, None
            return folder.name if self._close(folder) else None

    def _close(self, folder: Path) -> bool:
        staged = folder / STAGED_RECORDS
        records = []
        if staged.is_file():
            for line in staged.read_text(encoding="utf-8").splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:  # a line cut short by a crash: its record was never acknowledged
                    continue
        if not records:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            return False
        self.layout.write_manifest(folder, records)
        staged.unlink()
        (folder / SUCCESS_MARKER).write_text(dt.datetime.now(dt.UTC).isoformat())
        target = self.landing / self.source / folder.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(folder, target)  # the batch appears whole, marker included
        return True
