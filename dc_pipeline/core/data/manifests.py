"""Reading a landing batch: its manifest, its observed schema, the schema verdict and the raw rows.

Nothing here coerces a value: raw rows keep every value as the source sent it (as text, or as image
bytes), and the original record is kept whole as JSON. Cleaning decides later what is acceptable.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dc_pipeline.core.data.contracts import SourceContract, stable_json

SUCCESS_MARKER = "_SUCCESS"
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


class ManifestError(ValueError):
    """A manifest cannot be read at all (so its records cannot even be counted)."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    sha256: str
    records: list[dict[str, Any]]  # one dict per manifest row, values as parsed from the file
    row_errors: dict[int, str]  # row number -> why that row could not be parsed
    column_types: dict[str, list[str]]  # observed logical types of non-null values per column

    @property
    def columns(self) -> list[str]:
        return list(self.column_types)

    def schema_hash(self) -> str:
        return hashlib.sha256(stable_json(self.column_types).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SchemaVerdict:
    status: str  # "ok", "warning" (aliases mapped) or "blocked"
    renames: dict[str, str]  # observed column -> contract column
    messages: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return self.status == "blocked"


def is_complete(batch_dir: Path) -> bool:
    return (batch_dir / SUCCESS_MARKER).is_file()


def _text_type(value: str) -> str:
    if _INT.fullmatch(value):
        return "integer"
    if _FLOAT.fullmatch(value):
        return "float"
    if value.lower() in ("true", "false"):
        return "boolean"
    return "string"


def _python_type(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "binary"
    if isinstance(value, str):
        return "string"
    if hasattr(value, "isoformat"):
        return "string"
    return "object"


def _arrow_type(arrow_type: Any) -> str:
    import pyarrow.types as pat

    if pat.is_boolean(arrow_type):
        return "boolean"
    if pat.is_integer(arrow_type):
        return "integer"
    if pat.is_floating(arrow_type) or pat.is_decimal(arrow_type):
        return "float"
    if pat.is_binary(arrow_type) or pat.is_large_binary(arrow_type) or pat.is_fixed_size_binary(arrow_type):
        return "binary"
    if pat.is_string(arrow_type) or pat.is_large_string(arrow_type):
        return "string"
    return "object"


def read_manifest(batch_dir: Path, contract: SourceContract) -> Manifest:
    """Read a batch's manifest as the contract names it; a row that cannot be parsed becomes a row error."""
    path = batch_dir / contract.manifest_file
    if not path.is_file():
        raise ManifestError(f"{path} not found: the batch has no manifest named as the contract says")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    records: list[dict[str, Any]] = []
    errors: dict[int, str] = {}
    types: dict[str, set[str]] = {}

    def observe(column: str, t: str | None) -> None:
        types.setdefault(column, set())
        if t:
            types[column].add(t)

    fmt = contract.manifest_format
    try:
        if fmt == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            for col in frame.columns:
                observe(col, None)
            for row in frame.to_dict("records"):
                rec = {k: (v if v != "" else None) for k, v in row.items()}
                for k, v in rec.items():
                    observe(k, _text_type(v) if v is not None else None)
                records.append(rec)
        elif fmt == "jsonl":
            for line in data.decode("utf-8", errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    errors[len(records)] = f"unparseable JSON line: {exc}"
                    records.append({"_line": line[:500]})
                    continue
                for k, v in rec.items():
                    observe(k, _python_type(v))
                records.append(rec)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            for name, arrow_type in zip(table.schema.names, table.schema.types):
                observe(name, None)
                if table.column(name).null_count < len(table):
                    observe(name, _arrow_type(arrow_type))
            records = table.to_pylist()
    except ManifestError:
        raise
    except Exception as exc:  # a corrupt file: nothing can be counted, so the whole batch fails loudly
        raise ManifestError(f"cannot read {path.name} as {fmt}: {exc}") from exc
    return Manifest(
        path=path,
        sha256=sha,
        records=records,
        row_errors=errors,
        column_types={k: sorted(v) for k, v in types.items()},
    )


def check_schema(manifest: Manifest, contract: SourceContract) -> SchemaVerdict:
    """Compare an observed schema with the contract.

    An alias is mapped with a warning. A missing required column, an unknown extra column, an
    ambiguous alias or a type outside the contract's types blocks the batch.
    """
    observed = manifest.column_types
    renames: dict[str, str] = {}
    messages: list[str] = []
    blocked = False
    alias_of = {alias: c.name for c in contract.columns for alias in c.aliases}
    for col in observed:
        if col in {c.name for c in contract.columns}:
            continue
        if col in alias_of:
            target = alias_of[col]
            if target in observed or target in renames.values():
                messages.append(f"column {col!r} is an alias of {target!r}, which is also present")
                blocked = True
            else:
                renames[col] = target
                messages.append(f"column {col!r} renamed: mapped to {target!r} (alias listed in the contract)")
        elif col == "_line":
            continue
        else:
            messages.append(f"unknown column {col!r} is not in the contract")
            blocked = True
    present = {renames.get(c, c): c for c in observed}
    for spec in contract.columns:
        if spec.name not in present:
            if spec.nullable and spec.field not in required_fields(contract):
                continue  # an optional column may be absent
            messages.append(f"required column {spec.name!r} is missing")
            blocked = True
            continue
        seen = set(observed[present[spec.name]])
        bad = seen - set(spec.types)
        # an integer is a valid float; anything else is an incompatible type change
        if "float" in spec.types:
            bad.discard("integer")
        if bad:
            messages.append(f"column {spec.name!r} has type {sorted(seen)}, contract allows {list(spec.types)}")
            blocked = True
    status = "blocked" if blocked else ("warning" if renames else "ok")
    return SchemaVerdict(status=status, renames=renames, messages=messages)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, float) and value != value:
        return None
    return value


def _as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def canonical_rows(manifest: Manifest, contract: SourceContract, verdict: SchemaVerdict) -> list[dict[str, Any]]:
    """One dict per manifest row with the canonical fields as raw text (image as a ref or bytes)."""
    by_field = {c.field: c.name for c in contract.columns}
    inverse = {v: k for k, v in verdict.renames.items()}  # contract column -> observed column
    rows = []
    for i, rec in enumerate(manifest.records):
        def get(field_name: str) -> Any:
            name = by_field.get(field_name)
            return rec.get(inverse.get(name, name)) if name else None

        common = {"row_number": i, "row_error": manifest.row_errors.get(i),
                  "raw_record": json.dumps({k: _jsonable(v) for k, v in rec.items()}, default=str)}
        if contract.kind == "reviews":
            rows.append({**common, "image_sha256": _as_text(get("image_sha256")),
                         "decision": _as_text(get("decision")), "label_raw": _as_text(get("label")),
                         "reviewer": _as_text(get("reviewer")), "reason": _as_text(get("reason")),
                         "decided_raw": _as_text(get("decided_at"))})
        else:
            rows.append({**common, "record_id": _as_text(get("record_id")), "image_value": get("image"),
                         "label_raw": _as_text(get("label")), "captured_raw": _as_text(get("captured_at")),
                         "device_id": _as_text(get("device_id"))})
    return rows


def required_fields(contract: SourceContract) -> tuple[str, ...]:
    from dc_pipeline.core.data.contracts import KINDS

    return KINDS[contract.kind][1]
