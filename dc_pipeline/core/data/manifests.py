"""Reading a landing batch: its manifest, its observed schema, the schema verdict and the raw rows.

Nothing here coerces a value: raw rows keep every value as the source sent it (as text, or as image
bytes), and the original record is kept whole as JSON. Cleaning decides later what is acceptable.

A manifest is read through the batch folder (no link followed, regular files only) and parsed within
the project's bounds (``manifests`` in ``_project.yaml``): a manifest past a bound, or one whose records
cannot even be counted, refuses its batch with a reason (``ManifestError``); a record that cannot be
taken as delivered (NUL byte, bytes that are not UTF-8, a lone surrogate, an over-long value, too
deep a JSON line) gets a row error and is quarantined, never silently changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dc_pipeline.core.data.contracts import ManifestLimits, SourceContract, stable_json
from dc_pipeline.core.data.safe_files import LINK, MISSING, NOT_REGULAR, TOO_LARGE, BatchFolder, UnsafeFile

SUCCESS_MARKER = "_SUCCESS"
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
_BOM = "\ufeff"


class ManifestError(ValueError):
    """A batch refused as a whole: its manifest cannot be read safely, is past a bound, or cannot be parsed
    (so its records cannot be counted one by one). ``reason`` is a batch refusal code."""

    def __init__(self, reason: str, detail: str, record_count: int | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.record_count = record_count


@dataclass(frozen=True)
class Manifest:
    path: Path
    sha256: str
    records: list[dict[str, Any]]  # one dict per manifest row, values as parsed from the file
    row_errors: dict[int, str]  # row number -> why that row could not be parsed ("<reason code>: detail")
    column_types: dict[str, list[str]]  # observed logical types of non-null values per column
    textual: bool = False  # every value was delivered as text (CSV): a string column accepts any of them
    problems: tuple[str, ...] = ()  # schema-level problems found while parsing (a duplicated column)

    @property
    def columns(self) -> list[str]:
        return list(self.column_types)

    def schema_hash(self) -> str:
        return hashlib.sha256(stable_json(self.column_types).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SchemaVerdict:
    status: str  # "ok", "warning" (aliases mapped), "blocked", or "refused" (the batch could not be read)
    renames: dict[str, str]  # observed column -> contract column
    messages: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return self.status in ("blocked", "refused")


def is_complete(batch_dir: Path) -> bool:
    """The batch's ``_SUCCESS`` marker is there (a link or a FIFO included, never followed or opened:
    ingestion refuses a marker that is not a regular file, with a recorded reason)."""
    try:
        os.lstat(Path(batch_dir) / SUCCESS_MARKER)
        return True
    except (OSError, ValueError):
        return False


def delivery_fingerprint(folder: BatchFolder, manifest_file: str, limits: ManifestLimits) -> str:
    """What identifies one delivery of a batch: its manifest's sha256, or, for a batch that will be
    refused unread, a fingerprint of what was found; the landing scan and ingestion share it."""
    marker = folder.kind(SUCCESS_MARKER)
    if marker != "file":
        return hashlib.sha256(f"refused:success-marker-is-{marker}".encode()).hexdigest()
    return folder.fingerprint(manifest_file, limits.max_bytes)


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

    if pat.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
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


def storable(text: str) -> str:
    """``text`` as the warehouse can hold it: unchanged when it is valid Unicode; otherwise with the bytes
    that were not UTF-8 (or a lone surrogate) written as backslash escapes. Used only for values whose
    record is quarantined for it, so no changed value is ever accepted."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def text_problem(value: str, limits: ManifestLimits, one_line: bool = False) -> str | None:
    """Why a delivered text value cannot be taken as it is, or None."""
    if "\x00" in value:
        return "holds a NUL byte"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (or holds a lone surrogate)"
    if len(value) > limits.max_value_chars:
        return f"has {len(value)} characters > {limits.max_value_chars}"
    if one_line and ("\n" in value or "\r" in value):
        return "spans lines (an unbalanced quote may have swallowed the rows after it)"
    return None


class _Columns:
    """Observed logical types per column, bounded in number."""

    def __init__(self, limits: ManifestLimits):
        self.types: dict[str, set[str]] = {}
        self.limits = limits

    def observe(self, column: str, t: str | None) -> None:
        if column not in self.types:
            if len(self.types) >= self.limits.max_columns:
                raise ManifestError("too_many_columns", f"more than {self.limits.max_columns} columns")
            self.types[column] = set()
        if t:
            self.types[column].add(t)

    def result(self) -> dict[str, list[str]]:
        return {k: sorted(v) for k, v in self.types.items()}


def _too_many_rows(limits: ManifestLimits, n: int | None = None) -> ManifestError:
    counted = f"{n} records" if n is not None else "more records"
    return ManifestError("too_many_records", f"{counted} than the {limits.max_rows} allowed", n)


def _parse_csv(data: bytes, limits: ManifestLimits):
    text = data.decode("utf-8", "surrogateescape")  # bytes that are not UTF-8 are kept, and flagged per row
    if text.startswith(_BOM):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    columns = _Columns(limits)
    records: list[dict[str, Any]] = []
    errors: dict[int, str] = {}
    problems: list[str] = []
    try:
        header = next(reader, None) or []
        if len(header) > limits.max_columns:
            raise ManifestError("too_many_columns", f"{len(header)} columns > {limits.max_columns}")
        names = []
        for name in header:
            if (why := text_problem(name, limits, one_line=True)) is not None:
                problems.append(f"column name {storable(name)!r} {why}")
            clean = storable(name)
            if clean in names:
                problems.append(f"column {clean!r} appears more than once")
            names.append(clean)
            columns.observe(clean, None)
        for row in reader:
            if not row:
                continue  # a blank line is not a record
            if len(records) >= limits.max_rows:
                raise _too_many_rows(limits)
            i = len(records)
            rec: dict[str, Any] = {}
            for name, value in zip(names, row):
                why = text_problem(value, limits, one_line=True)
                if why is not None and i not in errors:
                    errors[i] = f"invalid_text: column {name!r} {why}"
                value = storable(value)
                rec[name] = value if value != "" else None
            if len(row) != len(names):
                rec["_extra_fields"] = [storable(v) for v in row[len(names) :]] or None
                if i not in errors:
                    errors[i] = f"unparseable_record: the row has {len(row)} fields, the header {len(names)}"
            if i not in errors:  # a record quarantined on its own does not decide the column's type
                for name in names:
                    value = rec.get(name)
                    columns.observe(name, _text_type(value) if value is not None else None)
            records.append(rec)
    except csv.Error as exc:  # an unterminated quote, text after a closing quote: rows cannot be told apart
        raise ManifestError("unreadable_manifest", f"CSV line {reader.line_num}: {exc}") from None
    return records, errors, columns.result(), problems


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen, dup = set(), None
        for k, _ in pairs:
            if k in seen:
                dup = k
                break
            seen.add(k)
        raise ValueError(f"key {dup!r} appears more than once")
    return out


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _json_depth_exceeds(text: str, max_depth: int) -> bool:
    """Whether a JSON text nests deeper than ``max_depth``, found without parsing it."""
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > max_depth:
            return True
    return False


def _parse_jsonl(data: bytes, limits: ManifestLimits):
    columns = _Columns(limits)
    records: list[dict[str, Any]] = []
    errors: dict[int, str] = {}
    if data.startswith(_BOM.encode()):
        data = data[len(_BOM.encode()) :]
    for raw_line in data.split(b"\n"):  # only "\n" ends a line: U+2028 and friends are valid inside JSON
        line = raw_line.rstrip(b"\r")
        if not line.strip():
            continue
        if len(records) >= limits.max_rows:
            raise _too_many_rows(limits)
        i = len(records)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors[i] = f"invalid_text: the line is not valid UTF-8 (byte {exc.start})"
            records.append({"_line": storable(line[:500].decode("utf-8", "backslashreplace"))})
            continue
        try:
            if _json_depth_exceeds(text, limits.max_json_depth):
                raise ValueError(f"nested deeper than {limits.max_json_depth}")
            rec = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as exc:
            errors[i] = f"unparseable JSON line: {storable(str(exc))[:300]}"
            records.append({"_line": storable(text[:500])})
            continue
        clean: dict[str, Any] = {}
        for key, value in rec.items():
            if (why := text_problem(key, limits)) is not None and i not in errors:
                errors[i] = f"invalid_text: key {storable(key)!r} {why}"
            if isinstance(value, str) and (why := text_problem(value, limits)) is not None and i not in errors:
                errors[i] = f"invalid_text: key {storable(key)!r} {why}"
            clean[storable(key)] = storable(value) if isinstance(value, str) else value
        for name, value in clean.items():  # a record quarantined on its own does not decide a column's type
            columns.observe(name, None if i in errors else _python_type(value))
        records.append(clean)
    return records, errors, columns.result(), []


def _parse_parquet(data: bytes, limits: ManifestLimits):
    """Parquet, bounded from the file's metadata before any page is decompressed: rows, columns, the
    declared uncompressed size; variable-width columns are read as dictionaries so a small file whose
    values repeat one large value cannot expand before its decoded size is checked."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import pyarrow.types as pat

    try:
        meta = pq.read_metadata(pa.BufferReader(data))
        schema = meta.schema.to_arrow_schema()
    except Exception as exc:
        raise ManifestError("unreadable_manifest", f"not a parquet file: {exc}") from None
    if meta.num_rows > limits.max_rows:
        raise _too_many_rows(limits, meta.num_rows)
    if meta.num_columns > limits.max_columns or len(schema) > limits.max_columns:
        raise ManifestError("too_many_columns", f"{meta.num_columns} columns > {limits.max_columns}", meta.num_rows)
    declared = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        chunks = sum(group.column(c).total_uncompressed_size for c in range(group.num_columns))
        declared += max(group.total_byte_size, chunks)
    if declared > limits.max_bytes:
        raise ManifestError(
            "manifest_too_large", f"{declared} bytes of data once decompressed > {limits.max_bytes}", meta.num_rows
        )
    names = list(schema.names)
    if duplicated := sorted({n for n in names if names.count(n) > 1}):  # which one would the bounds apply to?
        raise ManifestError("unreadable_manifest", f"columns appear more than once: {duplicated}", meta.num_rows)
    nested = [f"{f.name!r} ({f.type})" for f in schema if pat.is_nested(f.type)]
    if nested:
        raise ManifestError(
            "unreadable_manifest", f"nested columns are not accepted: {', '.join(nested)}", meta.num_rows
        )

    def variable(t) -> bool:
        return pat.is_binary(t) or pat.is_large_binary(t) or pat.is_string(t) or pat.is_large_string(t)

    as_dictionary = [n for n, f in zip(names, schema) if variable(f.type)]
    try:
        table = pq.ParquetFile(pa.BufferReader(data), read_dictionary=as_dictionary).read(use_threads=False)
    except Exception as exc:
        raise ManifestError("unreadable_manifest", f"cannot read the parquet data: {exc}", meta.num_rows) from None
    if table.num_rows > limits.max_rows:
        raise _too_many_rows(limits, table.num_rows)
    decoded = 0
    for column in table.columns:
        for chunk in column.chunks:
            if isinstance(chunk, pa.DictionaryArray):
                sizes = pc.take(pc.binary_length(chunk.dictionary), chunk.indices)
                decoded += int(pc.sum(sizes).as_py() or 0)
            elif variable(chunk.type):
                decoded += int(pc.sum(pc.binary_length(chunk)).as_py() or 0)
            else:
                decoded += chunk.nbytes
    if decoded > limits.max_bytes:
        raise ManifestError(
            "manifest_too_large", f"{decoded} bytes of decoded values > {limits.max_bytes}", table.num_rows
        )

    columns = _Columns(limits)
    records: list[dict[str, Any]] = [{} for _ in range(table.num_rows)]
    errors: dict[int, str] = {}
    for name, file_field, column in zip(names, schema, table.columns):
        columns.observe(name, None)
        if column.null_count < len(column):
            columns.observe(name, _arrow_type(file_field.type))
        is_text = pat.is_string(file_field.type) or pat.is_large_string(file_field.type)
        values = _arrow_values(column, is_text)
        for i, value in enumerate(values):
            if is_text and value is not None:
                why = text_problem(value, limits)
                if why is not None and i not in errors:
                    errors[i] = f"invalid_text: column {name!r} {why}"
                value = storable(value)
            records[i][name] = value
    return records, errors, columns.result(), []


def _arrow_values(column, is_text: bool) -> list[Any]:
    """Python values of one column; text is decoded here, so bytes that are not UTF-8 are kept (and flagged)
    instead of failing the batch. A dictionary's values are decoded once and shared."""
    import pyarrow as pa

    def plain(arr) -> list[Any]:
        if is_text:
            raw = arr.cast(pa.large_binary()).to_pylist()
            return [None if v is None else v.decode("utf-8", "surrogateescape") for v in raw]
        try:
            return arr.to_pylist()
        except (ValueError, OverflowError, pa.ArrowException):  # e.g. a date beyond year 9999
            try:
                return arr.cast(pa.string()).to_pylist()
            except (ValueError, OverflowError, pa.ArrowException) as exc:
                raise ManifestError("unreadable_manifest", f"column values cannot be read: {exc}") from None

    out: list[Any] = []
    for chunk in column.chunks:
        if isinstance(chunk, pa.DictionaryArray):
            dictionary = plain(chunk.dictionary)
            out.extend(None if i is None else dictionary[i] for i in chunk.indices.to_pylist())
        else:
            out.extend(plain(chunk))
    return out


_REFUSALS = {
    MISSING: "manifest_missing",
    LINK: "unsafe_manifest",
    NOT_REGULAR: "unsafe_manifest",
    TOO_LARGE: "manifest_too_large",
}


def read_manifest(
    batch: BatchFolder | Path, contract: SourceContract, limits: ManifestLimits | None = None
) -> Manifest:
    """Read a batch's manifest as the contract names it; a row that cannot be parsed becomes a row error,
    a manifest that cannot be read or is past a bound raises ``ManifestError``."""
    limits = limits or ManifestLimits()
    if not isinstance(batch, BatchFolder):
        try:
            folder = BatchFolder.open_path(batch)
        except UnsafeFile as exc:
            raise ManifestError("unsafe_batch_folder", exc.detail) from None
        with folder:
            return read_manifest(folder, contract, limits)
    name = contract.manifest_file
    try:
        data = batch.read(name, limits.max_bytes)
    except UnsafeFile as exc:
        raise ManifestError(_REFUSALS.get(exc.kind, "unreadable_manifest"), exc.detail) from None
    fmt = contract.manifest_format
    parse = {"csv": _parse_csv, "jsonl": _parse_jsonl, "parquet": _parse_parquet}[fmt]
    try:
        records, errors, column_types, problems = parse(data, limits)
    except ManifestError:
        raise
    except (ValueError, MemoryError, RecursionError, OSError) as exc:  # a corrupt file: nothing can be counted
        raise ManifestError("unreadable_manifest", f"cannot read {name} as {fmt}: {storable(str(exc))[:500]}") from None
    return Manifest(
        path=batch.path / name,
        sha256=hashlib.sha256(data).hexdigest(),
        records=records,
        row_errors=errors,
        column_types=column_types,
        textual=fmt == "csv",
        problems=tuple(problems),
    )


def check_schema(manifest: Manifest, contract: SourceContract) -> SchemaVerdict:
    """Compare an observed schema with the contract.

    An alias is mapped with a warning. A missing required column, an unknown extra column, an
    ambiguous alias or a type outside the contract's types blocks the batch.
    """
    observed = manifest.column_types
    renames: dict[str, str] = {}
    messages: list[str] = list(manifest.problems)
    blocked = bool(manifest.problems)
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
        if manifest.textual and "string" in spec.types:
            bad = set()  # delivered as text: any text is a string (a leading-zero id stays one)
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
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    return storable(str(value))


def canonical_rows(manifest: Manifest, contract: SourceContract, verdict: SchemaVerdict) -> list[dict[str, Any]]:
    """One dict per manifest row with the canonical fields as raw text (image as a ref or bytes)."""
    by_field = {c.field: c.name for c in contract.columns}
    inverse = {v: k for k, v in verdict.renames.items()}  # contract column -> observed column
    rows = []
    for i, rec in enumerate(manifest.records):

        def get(field_name: str, rec: dict[str, Any] = rec) -> Any:
            name = by_field.get(field_name)
            return rec.get(inverse.get(name, name)) if name else None

        common = {
            "row_number": i,
            "row_error": manifest.row_errors.get(i),
            "raw_record": json.dumps({k: _jsonable(v) for k, v in rec.items()}, default=str),
        }
        if contract.kind == "reviews":
            rows.append(
                {
                    **common,
                    "image_sha256": _as_text(get("image_sha256")),
                    "decision": _as_text(get("decision")),
                    "label_raw": _as_text(get("label")),
                    "reviewer": _as_text(get("reviewer")),
                    "reason": _as_text(get("reason")),
                    "decided_raw": _as_text(get("decided_at")),
                }
            )
        else:
            rows.append(
                {
                    **common,
                    "record_id": _as_text(get("record_id")),
                    "image_value": get("image"),
                    "label_raw": _as_text(get("label")),
                    "captured_raw": _as_text(get("captured_at")),
                    "device_id": _as_text(get("device_id")),
                }
            )
    return rows


def required_fields(contract: SourceContract) -> tuple[str, ...]:
    from dc_pipeline.core.data.contracts import KINDS

    return KINDS[contract.kind][1]
