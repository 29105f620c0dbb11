"""Source contracts: what each source promises to deliver, and how it maps onto the canonical record.

A contract is one YAML file per source (see ``dc_pipeline/contracts/``). It names the manifest file
and format, every column with its logical types and the aliases it tolerates, the canonical field
each column feeds, the label vocabulary and the timestamp format. ``_project.yaml`` beside them
holds the project-wide settings (class ids, image bounds, plausible time range).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

CANONICAL_FIELDS = ("record_id", "image", "label", "captured_at", "device_id")
REQUIRED_FIELDS = ("record_id", "image", "label", "captured_at")
UNLABELLED_REQUIRED = ("record_id", "image", "captured_at")  # a source whose contract says labels: {required: false}
# A "reviews" source delivers reviewers' decisions about images already in the pipeline, not images.
REVIEW_FIELDS = ("image_sha256", "decision", "label", "reviewer", "reason", "decided_at")
REVIEW_REQUIRED = ("image_sha256", "decision", "reviewer", "decided_at")
DECISIONS = ("relabel", "confirm", "exclude", "label")
LABELLING_DECISIONS = ("relabel", "label")  # decisions that carry a class: a correction, or the first label
KINDS = {"images": (CANONICAL_FIELDS, REQUIRED_FIELDS), "reviews": (REVIEW_FIELDS, REVIEW_REQUIRED)}
LOGICAL_TYPES = ("integer", "float", "string", "binary", "boolean", "object")
MANIFEST_FORMATS = ("csv", "jsonl", "parquet")
PROJECT_FILE = "_project.yaml"


class ContractError(ValueError):
    """A contract file is malformed."""


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    field: str
    types: tuple[str, ...]
    nullable: bool = False
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceContract:
    source: str
    description: str
    kind: str  # "images" or "reviews"
    manifest_file: str
    manifest_format: str
    columns: tuple[ColumnSpec, ...]
    image_kind: str | None  # "path" (relative file) or "inline" (bytes in the manifest); None for reviews
    label_map: dict[str, int]
    label_class_ids: bool
    timestamp_format: str  # "iso8601", "epoch_ms", "epoch_s" or a strftime pattern
    timestamp_timezone: str
    version: str  # sha256 of the contract file, first 12 hex digits
    labels_required: bool = True  # False: records may arrive unlabelled (production traffic)

    def column_for(self, canonical_field: str) -> ColumnSpec | None:
        return next((c for c in self.columns if c.field == canonical_field), None)


@dataclass(frozen=True)
class ManifestLimits:
    """Bounds on a manifest, checked before (parquet: from its metadata) and while parsing it."""

    max_bytes: int = 256 * 1024 * 1024  # file size; for parquet also the declared and the decoded data size
    max_rows: int = 100_000
    max_columns: int = 256
    max_json_depth: int = 16  # nesting of a JSON line
    max_value_chars: int = 4096  # a longer text value makes its record unparseable


@dataclass(frozen=True)
class ProjectSpec:
    classes: tuple[int, ...]
    image_formats: tuple[str, ...]
    image_modes: tuple[str, ...]
    min_side: int
    max_side: int
    max_pixels: int
    max_file_bytes: int
    earliest: datetime
    max_future: timedelta
    manifests: ManifestLimits = ManifestLimits()

    def plausible_until(self, now: datetime) -> datetime:
        """The latest plausible capture or decision time at ``now``."""
        return now + self.max_future


@dataclass(frozen=True)
class Contracts:
    project: ProjectSpec
    sources: dict[str, SourceContract] = field(default_factory=dict)

    def __getitem__(self, source: str) -> SourceContract:
        try:
            return self.sources[source]
        except KeyError:
            raise ContractError(f"no contract for source {source!r}; known: {sorted(self.sources)}") from None


def _parse_duration(text: str) -> timedelta:
    m = re.fullmatch(r"\s*(\d+)\s*(second|minute|hour|day)s?\s*", str(text))
    if not m:
        raise ContractError(f"cannot read duration {text!r} (use e.g. '1 day')")
    return timedelta(**{m.group(2) + "s": int(m.group(1))})


def _load_project(path: Path) -> ProjectSpec:
    raw = yaml.safe_load(path.read_text())
    img, ts = raw["images"], raw["timestamps"]
    return ProjectSpec(
        classes=tuple(int(c) for c in raw["classes"]),
        image_formats=tuple(img["formats"]),
        image_modes=tuple(img["modes"]),
        min_side=int(img["min_side"]),
        max_side=int(img["max_side"]),
        max_pixels=int(img["max_pixels"]),
        max_file_bytes=int(img["max_file_bytes"]),
        earliest=datetime.fromisoformat(str(ts["earliest"]).replace("Z", "+00:00")),
        max_future=_parse_duration(ts["max_future"]),
        manifests=_manifest_limits(raw.get("manifests") or {}),
    )


def _manifest_limits(raw: dict) -> ManifestLimits:
    known = set(ManifestLimits.__dataclass_fields__)
    if unknown := set(raw) - known:
        raise ContractError(f"{PROJECT_FILE}: unknown manifests settings {sorted(unknown)}; known: {sorted(known)}")
    return ManifestLimits(**{k: int(v) for k, v in raw.items()})


def load_contract(path: Path) -> SourceContract:
    text = path.read_text()
    raw = yaml.safe_load(text)
    where = f"contract {path.name}"
    try:
        kind = raw.get("kind", "images")
        if kind not in KINDS:
            raise ContractError(f"{where}: kind {kind!r} not one of {sorted(KINDS)}")
        allowed, required = KINDS[kind]
        labels = raw.get("labels") or {}
        labels_required = labels.get("required", True)
        if not isinstance(labels_required, bool):
            raise ContractError(f"{where}: labels.required must be true or false")
        if kind == "images" and not labels_required:
            required = UNLABELLED_REQUIRED
        fmt = raw["manifest"]["format"]
        if fmt not in MANIFEST_FORMATS:
            raise ContractError(f"{where}: manifest format {fmt!r} not one of {MANIFEST_FORMATS}")
        columns = []
        for name, spec in raw["columns"].items():
            types = tuple(spec["types"])
            bad = set(types) - set(LOGICAL_TYPES)
            if bad:
                raise ContractError(f"{where}: column {name}: unknown types {sorted(bad)}")
            if spec["field"] not in allowed:
                raise ContractError(f"{where}: column {name}: field {spec['field']!r} not in {allowed}")
            columns.append(
                ColumnSpec(
                    name=name,
                    field=spec["field"],
                    types=types,
                    nullable=bool(spec.get("nullable", False)),
                    aliases=tuple(spec.get("aliases", ())),
                )
            )
        fields = [c.field for c in columns]
        missing = [f for f in required if f not in fields]
        if missing or len(set(fields)) != len(fields):
            raise ContractError(f"{where}: every field in {required} must be fed by exactly one column")
        timezone_name = raw["timestamp"].get("timezone", "UTC")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(timezone_name)
        except (ValueError, LookupError) as exc:
            raise ContractError(f"{where}: unknown timestamp timezone {timezone_name!r} ({exc})") from None
        image_kind = raw["image"]["kind"] if kind == "images" else None
        if kind == "images" and image_kind not in ("path", "inline"):
            raise ContractError(f"{where}: image kind must be 'path' or 'inline'")
        return SourceContract(
            source=raw["source"],
            description=raw.get("description", ""),
            kind=kind,
            manifest_file=raw["manifest"]["file"],
            manifest_format=fmt,
            columns=tuple(columns),
            image_kind=image_kind,
            label_map={str(k).strip().lower(): int(v) for k, v in (labels.get("map") or {}).items()},
            label_class_ids=bool(labels.get("class_ids", False)),
            timestamp_format=raw["timestamp"]["format"],
            timestamp_timezone=timezone_name,
            version=hashlib.sha256(text.encode()).hexdigest()[:12],
            labels_required=labels_required,
        )
    except KeyError as exc:
        raise ContractError(f"{where}: missing key {exc}") from None


def source_kinds(directory: str | Path) -> dict[str, str]:
    """``{source: kind}`` from the contract files, read cheaply (definitions load time)."""
    out = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        if path.name != PROJECT_FILE:
            out[path.stem] = (yaml.safe_load(path.read_text()) or {}).get("kind", "images")
    return out


def unlabelled_sources(directory: str | Path) -> list[str]:
    """Image sources whose contracts let records arrive unlabelled (``labels: {required: false}``), read
    cheaply (definitions load time)."""
    out = []
    for path in sorted(Path(directory).glob("*.yaml")):
        if path.name != PROJECT_FILE:
            raw = yaml.safe_load(path.read_text()) or {}
            if raw.get("kind", "images") == "images" and (raw.get("labels") or {}).get("required", True) is False:
                out.append(path.stem)
    return out


def load_contracts(directory: str | Path) -> Contracts:
    """Load ``_project.yaml`` and every ``<source>.yaml`` contract in ``directory``."""
    directory = Path(directory)
    project_file = directory / PROJECT_FILE
    if not project_file.exists():
        raise ContractError(f"{project_file} not found")
    sources = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name == PROJECT_FILE:
            continue
        contract = load_contract(path)
        if contract.source != path.stem:
            raise ContractError(f"contract {path.name} declares source {contract.source!r}; name the file after it")
        sources[contract.source] = contract
    return Contracts(project=_load_project(project_file), sources=sources)


def image_sources(contracts: Contracts) -> list[str]:
    return sorted(s for s, c in contracts.sources.items() if c.kind == "images")


# ---------------------------------------------------------------------------------------------
# Labels and timestamps


def label_absent(raw: Any) -> bool:
    return raw is None or (isinstance(raw, float) and raw != raw) or str(raw).strip() == ""


def normalize_label(raw: Any, contract: SourceContract, classes: tuple[int, ...]) -> tuple[int | None, str | None]:
    """Map a raw label onto a class id. Returns ``(class_id, None)`` or ``(None, reason)``; an absent label
    is ``(None, None)`` (an unlabelled record) where the contract says labels are not required."""
    if label_absent(raw):
        return None, (None if not contract.labels_required else "missing_label")
    token = str(raw).strip().lower()
    if token in contract.label_map:
        return contract.label_map[token], None
    if contract.label_class_ids and re.fullmatch(r"[+-]?\d+", token) and int(token) in classes:
        return int(token), None
    return None, "unknown_label"


_EPOCH_TEXT = re.compile(r"[+-]?\d{1,40}")


def _epoch_seconds(text: str, fmt: str) -> int | float | None:
    if not _EPOCH_TEXT.fullmatch(text):
        return None
    value = int(text)
    return value / 1000 if fmt == "epoch_ms" else value


def parse_timestamp(raw: Any, contract: SourceContract) -> datetime | None:
    """Parse a raw timestamp into an aware UTC datetime, or None when it does not fit the format or lies
    outside what a datetime represents (years 1 to 9999). Never raises."""
    if raw is None or (isinstance(raw, float) and raw != raw) or str(raw).strip() == "":
        return None
    text = str(raw).strip()
    fmt = contract.timestamp_format
    try:
        if fmt in ("epoch_ms", "epoch_s"):
            seconds = _epoch_seconds(text, fmt)
            if seconds is None or not -62_135_596_800 <= seconds <= 253_402_300_799:  # 0001-01-01 .. 9999-12-31
                return None
            return datetime.fromtimestamp(seconds, tz=UTC)
        if fmt == "iso8601":
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if parsed.tzinfo is None:  # ISO 8601 without an offset is ambiguous: refuse it
                return None
        else:
            parsed = datetime.strptime(text, fmt)
            if parsed.tzinfo is None:
                from zoneinfo import ZoneInfo

                parsed = parsed.replace(tzinfo=ZoneInfo(contract.timestamp_timezone))
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError, ArithmeticError):
        return None


def check_timestamp(
    raw: Any, contract: SourceContract, earliest: datetime, latest: datetime
) -> tuple[datetime | None, str | None]:
    """A raw time checked into ``[earliest, latest]``: ``(utc datetime, None)``, or ``(None,
    "invalid_timestamp")`` when it does not parse, or ``(datetime or None, "implausible_timestamp")`` when
    it parses but lies outside the range (an epoch beyond what a datetime represents included)."""
    parsed = parse_timestamp(raw, contract)
    if parsed is None:
        seconds = None
        if contract.timestamp_format in ("epoch_ms", "epoch_s") and raw is not None:
            seconds = _epoch_seconds(str(raw).strip(), contract.timestamp_format)
        if seconds is None:
            return None, "invalid_timestamp"
        return None, "implausible_timestamp"  # a well-formed epoch far outside any calendar
    if parsed < earliest or parsed > latest:
        return parsed, "implausible_timestamp"
    return parsed, None


def contract_summary(contract: SourceContract) -> dict[str, Any]:
    """A JSON-able description, for metadata and docs."""
    return {
        "source": contract.source,
        "version": contract.version,
        "manifest": f"{contract.manifest_file} ({contract.manifest_format})",
        "columns": {
            c.name: {"field": c.field, "types": list(c.types), "nullable": c.nullable, "aliases": list(c.aliases)}
            for c in contract.columns
        },
        "timestamp_format": contract.timestamp_format,
        "labels_required": contract.labels_required,
    }


def stable_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
