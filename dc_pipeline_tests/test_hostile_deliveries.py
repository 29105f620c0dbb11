"""Hostile and broken deliveries, through the real raw assets, batch checks and cleaning.

Every case builds a batch from the demo's records (``write_demo_landing``, then a mutation) and must
end in one of two ways: the batch ingested with a reason for each record it could not take, or the
batch refused with a recorded batch-level reason. Never a crashed run, never a record missing from the
accounting, never a byte read from outside the batch folder.

The cases share one pipeline (each is its own batch, with its own record ids): they are ingested one
by one, cleaning runs once, and each case is then checked on its own.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dc_pipeline.core.data.cleaning import BATCH_REFUSALS, REASONS
from dc_pipeline.core.data.landing import scan_landing
from dc_pipeline.demo.landing import WRITERS, write_demo_landing

from .conftest import make_pipeline

K = 24  # records per case batch: one bad record stays within every batch-quality tolerance
MANIFEST = {"field_app": "manifest.csv", "partner_api": "manifest.jsonl", "legacy_erp": "manifest.parquet"}
PATH_KEY = {"field_app": "file", "partner_api": "image_path"}
SECRET = "SECRET-OUTSIDE-THE-LANDING-ZONE"


class Unavailable(Exception):
    """The machine cannot build this case (e.g. no permission to create a device node)."""


# ---------------------------------------------------------------------------------------------
# Building case batches


@dataclass
class Batch:
    """A case's batch folder with the demo records it was written from (writer format)."""

    dir: Path
    source: str
    rows: list[dict]
    outside: Path  # a folder outside the landing zone, holding the secret files

    @property
    def manifest(self) -> Path:
        return self.dir / MANIFEST[self.source]

    def write(self) -> None:
        WRITERS[self.source](self.dir, self.rows)

    def image(self, i: int) -> Path:
        return self.dir / self.rows[i][PATH_KEY[self.source]]

    def inject(self, i: int, key: str, raw: bytes) -> None:
        """Put ``raw`` bytes, exactly, where record ``i``'s ``key`` is in the manifest (JSON: the whole value)."""
        token = f"@@{i}-{key}@@"
        self.rows[i][key] = token
        self.write()
        quoted = f'"{token}"' if self.source == "partner_api" else token
        data = self.manifest.read_bytes()
        assert data.count(quoted.encode()) == 1
        self.manifest.write_bytes(data.replace(quoted.encode(), raw))

    def replace_with(self, path: Path, make: Callable[[Path], None]) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        make(path)

    def table(self) -> pa.Table:
        return pq.read_table(self.manifest)

    def write_table(self, table: pa.Table, **kwargs) -> None:
        pq.write_table(table, self.manifest, **kwargs)


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    mutate: Callable[[Batch], None] = lambda b: None
    outcome: str = "accepted"  # accepted | refused (no rows, a reason) | blocked (schema) | quality (batch_quality)
    reasons: dict[str, int] = field(default_factory=dict)  # quarantine reasons of an accepted batch
    refusal: str | None = None  # the refusal code, or a part of the blocking message
    records: int | None = K  # records in the manifest after the mutation (None: not counted)
    size: int = K

    @property
    def batch_id(self) -> str:
        return f"hx-{self.name}"


def _symlink_to(target: Path) -> Callable[[Path], None]:
    return lambda p: p.symlink_to(target)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()


def _socket(path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(path.parent)  # a socket path is limited to ~100 bytes: bind by name
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(path.name)
    finally:
        os.chdir(cwd)


def _device(path: Path) -> None:
    import stat

    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    except PermissionError as exc:
        raise Unavailable(f"cannot create a device node here: {exc}") from None


def _sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with open(path, "wb") as fh:
            fh.truncate(size)  # reported size, no bytes written: reading it would be the bug

    return make


def _outside_batch(b: Batch) -> None:
    """The batch folder becomes a link to a complete, valid batch elsewhere on the machine."""
    target = b.outside / f"batch-for-{b.dir.name}"
    shutil.copytree(b.outside / "valid_field_app_batch", target)
    shutil.rmtree(b.dir)
    b.dir.symlink_to(target, target_is_directory=True)


def _images_folder_link(b: Batch) -> None:
    target = b.outside / f"images-for-{b.dir.name}"
    shutil.move(str(b.dir / "images"), target)
    (b.dir / "images").symlink_to(target, target_is_directory=True)


def _one_image_through_a_linked_folder(b: Batch) -> None:
    target = b.outside / f"linked-for-{b.dir.name}"
    target.mkdir()
    name = b.image(0).name
    shutil.copy(b.image(0), target / name)
    _path(f"linked/{name}")(b)
    (b.dir / "linked").symlink_to(target, target_is_directory=True)


def _loop(b: Batch) -> None:
    _path("loop/x.png")(b)
    (b.dir / "loop").symlink_to("loop")


def _path(value: str) -> Callable[[Batch], None]:
    """Record 0 names ``value`` as its image (its own file stays where it was)."""

    def mutate(b: Batch) -> None:
        b.rows[0][PATH_KEY[b.source]] = value
        b.rows[0]["_image"] = None  # the writer would write through the path
        b.write()

    return mutate


def _dotdot(b: Batch) -> None:
    rel = os.path.relpath(b.outside / "secret.png", b.dir)
    _path(rel)(b)


def _absolute(b: Batch) -> None:
    _path(str(b.outside / "secret.png"))(b)


def _value(i: int, key: str, value) -> Callable[[Batch], None]:
    def mutate(b: Batch) -> None:
        b.rows[i][key] = value
        b.write()

    return mutate


def _raw(i: int, key: str, raw: bytes) -> Callable[[Batch], None]:
    return lambda b: b.inject(i, key, raw)


def _manifest_bytes(change: Callable[[bytes], bytes]) -> Callable[[Batch], None]:
    return lambda b: b.manifest.write_bytes(change(b.manifest.read_bytes()))


def _too_many_csv_rows(b: Batch) -> None:
    lines = b.manifest.read_bytes().splitlines(keepends=True)
    b.manifest.write_bytes(lines[0] + lines[1] * 100_001)


def _too_many_columns_csv(b: Batch) -> None:
    lines = b.manifest.read_bytes().splitlines(keepends=True)
    extra = b"".join(b",x%d" % i for i in range(300))
    b.manifest.write_bytes(b"".join([lines[0].rstrip(b"\n") + extra + b"\n", *lines[1:]]))


def _unterminated_quote(b: Batch) -> None:
    b.manifest.write_bytes(b.manifest.read_bytes() + b'"fa-broken,images/x.png,3,2026-10-01T00:00:00+00:00,dev\n')


def _quote_swallows_rows(b: Batch) -> None:
    b.rows[0]["device_id"] = "@@open@@"
    b.rows[2]["device_id"] = "@@close@@"
    b.write()
    data = b.manifest.read_bytes().replace(b"@@open@@", b'"dev-01').replace(b"@@close@@", b'dev-03"')
    b.manifest.write_bytes(data)


def _leading_zero_devices(b: Batch) -> None:
    for row in b.rows:
        row["device_id"] = "007"
    b.write()


def _duplicate_csv_column(b: Batch) -> None:
    lines = b.manifest.read_bytes().splitlines(keepends=True)
    out = [lines[0].rstrip(b"\n") + b",label\n"] + [line.rstrip(b"\n") + b",3\n" for line in lines[1:]]
    b.manifest.write_bytes(b"".join(out))


def _ragged_row(b: Batch) -> None:
    lines = b.manifest.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].rstrip(b"\n") + b",EXTRA\n"
    b.manifest.write_bytes(b"".join(lines))


def _empty_batch(b: Batch) -> None:
    b.rows.clear()
    shutil.rmtree(b.dir)
    b.dir.mkdir(parents=True)
    b.manifest.write_text("image_id,file,label,captured_at,device_id\n")
    (b.dir / "_SUCCESS").write_text("")


def _jsonl_line(i: int, line: bytes) -> Callable[[Batch], None]:
    def mutate(b: Batch) -> None:
        lines = b.manifest.read_bytes().split(b"\n")
        lines[i] = line
        b.manifest.write_bytes(b"\n".join(lines))

    return mutate


def _deep_json(b: Batch) -> None:
    rec = b.rows[0]
    depth = 100_000
    line = (
        b'{"id": %d, "image_path": "%s", "digit": ' % (rec["id"], rec["image_path"].encode())
        + b"[" * depth
        + b"]" * depth
        + b', "ts": %d}' % rec["ts"]
    )
    _jsonl_line(0, line)(b)


def _duplicate_keys(b: Batch) -> None:
    rec = b.rows[0]
    _jsonl_line(
        0,
        b'{"id": %d, "id": 1, "image_path": "%s", "digit": 3, "ts": %d}'
        % (rec["id"], rec["image_path"].encode(), rec["ts"]),
    )(b)


def _many_keys(b: Batch) -> None:
    rec = {**{k: v for k, v in b.rows[0].items() if not k.startswith("_")}, **{f"k{i}": i for i in range(300)}}
    _jsonl_line(0, json.dumps(rec).encode())(b)


def _crlf_and_blank_lines(b: Batch) -> None:
    lines = [line for line in b.manifest.read_bytes().split(b"\n") if line]
    b.manifest.write_bytes(b"\r\n\r\n".join(lines) + b"\r\n\n   \n")


def _huge_image_file(b: Batch) -> None:
    b.replace_with(b.image(0), _sparse(8 * 1024 * 1024 * 1024))


def _parquet_rows_bomb(b: Batch) -> None:
    n = 1_000_000
    ids = pa.array(np.arange(n, dtype=np.int64))
    img = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([b.rows[0]["IMG"]]))
    text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array(["D1"]))
    created = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array(["01/10/2026"]))
    table = pa.table({"RECORD_ID": ids, "IMG": img, "CLASS_CODE": text, "CREATED": created})
    b.write_table(table, compression="zstd")
    assert b.manifest.stat().st_size < 10 * 1024 * 1024, "a small file that expands to a million rows"


def _parquet_dictionary_bomb(b: Batch) -> None:
    """1,000 rows that all hold the same 300 KB value: 300 MB once decoded, a few hundred KB on disk."""
    n, big = 1_000, b"\x89PNG" + bytes(300 * 1024)
    index = pa.array(np.zeros(n, dtype=np.int32))
    table = pa.table(
        {
            "RECORD_ID": pa.array(np.arange(n, dtype=np.int64)),
            "IMG": pa.DictionaryArray.from_arrays(index, pa.array([big])),
            "CLASS_CODE": pa.array(["D1"] * n),
            "CREATED": pa.array(["01/10/2026"] * n),
        }
    )
    b.write_table(table, compression="zstd")
    assert b.manifest.stat().st_size < 5 * 1024 * 1024


def _parquet_truncated(b: Batch) -> None:
    data = b.manifest.read_bytes()
    b.manifest.write_bytes(data[: len(data) // 2])


def _parquet_nested(b: Batch) -> None:
    table = b.table()
    b.write_table(table.append_column("TAGS", pa.array([["a", "b"]] * len(table))))


def _parquet_duplicate_column(b: Batch) -> None:
    table = b.table()
    b.write_table(table.append_column("CLASS_CODE", table.column("CLASS_CODE")))


def _parquet_invalid_utf8(b: Batch) -> None:
    table = b.table()
    codes = [c.encode() for c in table.column("CLASS_CODE").to_pylist()]
    codes[0] = b"D\xff7"
    column = pa.array(codes, pa.binary()).view(pa.string())  # bytes a careless exporter labelled as text
    b.write_table(table.set_column(2, "CLASS_CODE", column))


def _parquet_created_as_timestamps(b: Batch) -> None:
    table = b.table()
    seconds = [1_790_000_000] * len(table)
    seconds[0] = 10**12  # year ~33658: no Python datetime holds it
    b.write_table(table.set_column(3, "CREATED", pa.array(seconds, pa.timestamp("s"))))


def _png_bomb(b: Batch) -> None:
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")  # 25 megapixels in a few KB
    _value(0, "IMG", buf.getvalue())(b)


# Reviews: each batch is 20 confirms (filler, so one bad record stays within the quality tolerances)
# plus its hostile rows; images are the control cases' accepted images.


@dataclass(frozen=True)
class Review:
    name: str
    rows: Callable[[list[str]], list[dict]]  # control images' sha256 -> hostile rows
    outcome: str = "accepted"
    reasons: dict[str, int] = field(default_factory=dict)
    refusal: str | None = None
    link_outside: bool = False

    @property
    def batch_id(self) -> str:
        return f"hx-{self.name}"


def decision(sha: str, what: str = "confirm", label=None, reviewer="rita", at="2026-10-05T10:00:00+00:00") -> dict:
    return {
        "image_sha256": sha,
        "decision": what,
        "new_label": label,
        "reviewer": reviewer,
        "reason": "",
        "decided_at": at,
    }


def write_reviews(batch_dir: Path, rows: list[dict], raw: dict[str, bytes] | None = None) -> None:
    batch_dir.mkdir(parents=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(decision("x")), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = buf.getvalue().encode()
    for token, value in (raw or {}).items():
        data = data.replace(token.encode(), value)
    (batch_dir / "decisions.csv").write_bytes(data)
    (batch_dir / "_SUCCESS").write_text("")


CASES: list[Case] = [
    # type stability: an empty first batch must not type a column for the batches after it
    Case("fa-empty-first", "field_app", _empty_batch, records=0),
    Case("fa-control", "field_app"),
    # links of every kind, entries that are not regular files
    Case(
        "fa-image-symlink-outside",
        "field_app",
        lambda b: b.replace_with(b.image(0), _symlink_to(b.outside / "secret.png")),
        reasons={"image_is_link": 1},
    ),
    Case(
        "fa-image-symlink-inside",
        "field_app",
        lambda b: b.replace_with(b.image(0), _symlink_to(b.image(1).name)),
        reasons={"image_is_link": 1},
    ),
    Case(
        "fa-image-hardlink-outside",
        "field_app",
        lambda b: b.replace_with(b.image(0), lambda p: os.link(b.outside / "secret.png", p)),
        reasons={"image_is_link": 1},
    ),
    Case(
        "fa-image-through-linked-folder", "field_app", _one_image_through_a_linked_folder, reasons={"image_is_link": 1}
    ),
    Case("fa-images-folder-link", "field_app", _images_folder_link, outcome="quality"),
    Case("fa-image-link-loop", "field_app", _loop, reasons={"image_is_link": 1}),
    Case(
        "fa-image-fifo", "field_app", lambda b: b.replace_with(b.image(0), _fifo), reasons={"image_not_regular_file": 1}
    ),
    Case(
        "fa-image-folder",
        "field_app",
        lambda b: b.replace_with(b.image(0), _folder),
        reasons={"image_not_regular_file": 1},
    ),
    Case(
        "fa-image-socket",
        "field_app",
        lambda b: b.replace_with(b.image(0), _socket),
        reasons={"image_not_regular_file": 1},
    ),
    Case(
        "fa-image-device",
        "field_app",
        lambda b: b.replace_with(b.image(0), _device),
        reasons={"image_not_regular_file": 1},
    ),
    Case(
        "fa-manifest-symlink-outside",
        "field_app",
        lambda b: b.replace_with(b.manifest, _symlink_to(b.outside / "manifest.csv")),
        outcome="refused",
        refusal="unsafe_manifest",
        records=None,
    ),
    Case(
        "fa-manifest-hardlink-outside",
        "field_app",
        lambda b: b.replace_with(b.manifest, lambda p: os.link(b.outside / "manifest.csv", p)),
        outcome="refused",
        refusal="unsafe_manifest",
        records=None,
    ),
    Case(
        "fa-manifest-fifo",
        "field_app",
        lambda b: b.replace_with(b.manifest, _fifo),
        outcome="refused",
        refusal="unsafe_manifest",
        records=None,
    ),
    Case(
        "fa-manifest-folder",
        "field_app",
        lambda b: b.replace_with(b.manifest, _folder),
        outcome="refused",
        refusal="unsafe_manifest",
        records=None,
    ),
    Case(
        "fa-manifest-missing",
        "field_app",
        lambda b: b.manifest.unlink(),
        outcome="refused",
        refusal="manifest_missing",
        records=None,
    ),
    Case(
        "fa-success-symlink",
        "field_app",
        lambda b: b.replace_with(b.dir / "_SUCCESS", _symlink_to(b.outside / "secret.png")),
        outcome="refused",
        refusal="unsafe_success_marker",
        records=None,
    ),
    Case(
        "fa-success-fifo",
        "field_app",
        lambda b: b.replace_with(b.dir / "_SUCCESS", _fifo),
        outcome="refused",
        refusal="unsafe_success_marker",
        records=None,
    ),
    Case(
        "fa-batch-folder-symlink",
        "field_app",
        _outside_batch,
        outcome="refused",
        refusal="unsafe_batch_folder",
        records=None,
    ),
    # path strings no file system accepts, or that leave the batch
    Case("fa-path-absolute", "field_app", _absolute, reasons={"image_path_outside_batch": 1}),
    Case("fa-path-dotdot", "field_app", _dotdot, reasons={"image_path_outside_batch": 1}),
    Case("fa-path-long-name", "field_app", _path("images/" + "a" * 300 + ".png"), reasons={"invalid_image_path": 1}),
    Case(
        "fa-path-long-path",
        "field_app",
        _path("/".join(["é" * 100] * 21) + "/x.png"),  # 4,200 bytes in 2,127 characters
        reasons={"invalid_image_path": 1},
    ),
    Case(
        "fa-path-nul",
        "field_app",
        lambda b: b.inject(0, "file", b"images/" + b.image(0).name.encode() + b"\x00.jpg"),
        reasons={"invalid_text": 1},
    ),
    Case("fa-path-dots-and-slashes", "field_app", lambda b: _path(f"./images//./{b.image(0).name}")(b)),
    # sizes and bounds
    Case(
        "fa-manifest-huge",
        "field_app",
        lambda b: b.replace_with(b.manifest, _sparse(300 * 1024 * 1024)),
        outcome="refused",
        refusal="manifest_too_large",
        records=None,
    ),
    Case(
        "fa-too-many-records",
        "field_app",
        _too_many_csv_rows,
        outcome="refused",
        refusal="too_many_records",
        records=None,
    ),
    Case(
        "fa-too-many-columns",
        "field_app",
        _too_many_columns_csv,
        outcome="refused",
        refusal="too_many_columns",
        records=None,
    ),
    # bytes parsers reject or mangle
    Case("fa-nul-in-label", "field_app", _raw(0, "label", b"3\x007"), reasons={"invalid_text": 1}),
    Case("fa-invalid-utf8", "field_app", _raw(0, "device_id", b"dev-\xff\xfe"), reasons={"invalid_text": 1}),
    Case("fa-encoded-surrogate", "field_app", _raw(0, "device_id", b"dev-\xed\xa0\x80"), reasons={"invalid_text": 1}),
    Case("fa-byte-order-mark", "field_app", _manifest_bytes(lambda d: b"\xef\xbb\xbf" + d)),
    Case(
        "fa-unterminated-quote",
        "field_app",
        _unterminated_quote,
        outcome="refused",
        refusal="unreadable_manifest",
        records=None,
    ),
    Case("fa-quote-swallows-rows", "field_app", _quote_swallows_rows, reasons={"invalid_text": 1}, records=K - 2),
    Case("fa-ragged-row", "field_app", _ragged_row, reasons={"unparseable_record": 1}),
    Case(
        "fa-duplicate-column",
        "field_app",
        _duplicate_csv_column,
        outcome="blocked",
        refusal="column 'label' appears more than once",
    ),
    Case(
        "fa-zero-byte-manifest",
        "field_app",
        _manifest_bytes(lambda d: b""),
        outcome="blocked",
        refusal="required column 'image_id' is missing",
        records=0,
    ),
    # type inference: a leading-zero device id stays the string it was
    Case("fa-leading-zero-device", "field_app", _leading_zero_devices),
    # timestamps at the edges of what Python, NumPy and pandas represent
    Case(
        "fa-ts-year-9999",
        "field_app",
        _value(0, "captured_at", "9999-12-31T23:59:59+00:00"),
        reasons={"implausible_timestamp": 1},
    ),
    Case(
        "fa-ts-overflow",
        "field_app",
        _value(0, "captured_at", "9999-12-31T23:59:59-01:00"),
        reasons={"invalid_timestamp": 1},
    ),
    Case(
        "fa-ts-year-0",
        "field_app",
        _value(0, "captured_at", "0000-01-01T00:00:00+00:00"),
        reasons={"invalid_timestamp": 1},
    ),
    Case(
        "fa-ts-year-1",
        "field_app",
        _value(0, "captured_at", "0001-01-01T00:00:00+00:00"),
        reasons={"implausible_timestamp": 1},
    ),
    Case(
        "fa-ts-epoch-start",
        "field_app",
        _value(0, "captured_at", "1970-01-01T00:00:00+00:00"),
        reasons={"implausible_timestamp": 1},
    ),
    Case("fa-ts-nan", "field_app", _value(0, "captured_at", "NaN"), reasons={"invalid_timestamp": 1}),
    Case(
        "fa-ts-year-2200",
        "field_app",
        _value(0, "captured_at", "2200-01-01T00:00:00+00:00"),
        reasons={"implausible_timestamp": 1},
    ),
    # partner_api: JSON lines and image files
    Case("pa-control", "partner_api"),
    Case("pa-deep-nesting", "partner_api", _deep_json, reasons={"unparseable_record": 1}),
    Case("pa-nan-constant", "partner_api", _raw(0, "ts", b"NaN"), reasons={"unparseable_record": 1}),
    Case("pa-infinity-constant", "partner_api", _raw(0, "ts", b"-Infinity"), reasons={"unparseable_record": 1}),
    Case("pa-lone-surrogate", "partner_api", _raw(0, "digit", b'"\\ud800"'), reasons={"invalid_text": 1}),
    Case("pa-invalid-utf8-line", "partner_api", _raw(0, "digit", b'"sev\xffen"'), reasons={"invalid_text": 1}),
    Case(
        "pa-line-separator-in-value",
        "partner_api",
        _raw(0, "digit", '"se\u2028ven"'.encode()),
        reasons={"unknown_label": 1},
    ),
    Case(
        "pa-nul-in-path",
        "partner_api",
        lambda b: b.inject(0, "image_path", b'"' + b.rows[0]["image_path"].encode() + b'\\u0000"'),
        reasons={"invalid_text": 1},
    ),
    Case("pa-duplicate-keys", "partner_api", _duplicate_keys, reasons={"unparseable_record": 1}),
    Case("pa-not-an-object", "partner_api", _jsonl_line(0, b"[1, 2, 3]"), reasons={"unparseable_record": 1}),
    Case("pa-too-many-keys", "partner_api", _many_keys, outcome="refused", refusal="too_many_columns", records=None),
    Case("pa-crlf-and-blank-lines", "partner_api", _crlf_and_blank_lines),
    Case("pa-huge-integer-id", "partner_api", _value(0, "id", 10**40)),
    Case("pa-epoch-1e30", "partner_api", _value(0, "ts", 10**30), reasons={"implausible_timestamp": 1}),
    Case("pa-epoch-negative", "partner_api", _value(0, "ts", -1), reasons={"implausible_timestamp": 1}),
    Case("pa-epoch-5000-digits", "partner_api", _raw(0, "ts", b"9" * 5000), reasons={"unparseable_record": 1}),
    Case("pa-epoch-float", "partner_api", _value(0, "ts", 1.5e12), outcome="blocked", refusal="column 'ts' has type"),
    Case("pa-image-link-loop", "partner_api", _loop, reasons={"image_is_link": 1}),
    Case("pa-image-huge-file", "partner_api", _huge_image_file, reasons={"image_file_too_large": 1}),
    Case(
        "pa-manifest-symlink-outside",
        "partner_api",
        lambda b: b.replace_with(b.manifest, _symlink_to(b.outside / "manifest.jsonl")),
        outcome="refused",
        refusal="unsafe_manifest",
        records=None,
    ),
    # legacy_erp: parquet with inline PNG bytes
    Case("le-control", "legacy_erp"),
    Case(
        "le-row-group-bomb",
        "legacy_erp",
        _parquet_rows_bomb,
        outcome="refused",
        refusal="too_many_records",
        records=1_000_000,
    ),
    Case(
        "le-dictionary-bomb",
        "legacy_erp",
        _parquet_dictionary_bomb,
        outcome="refused",
        refusal="manifest_too_large",
        records=1_000,
    ),
    Case(
        "le-truncated-file",
        "legacy_erp",
        _parquet_truncated,
        outcome="refused",
        refusal="unreadable_manifest",
        records=None,
    ),
    Case(
        "le-not-parquet",
        "legacy_erp",
        _manifest_bytes(lambda d: b"RECORD_ID,IMG\n1,2\n"),
        outcome="refused",
        refusal="unreadable_manifest",
        records=None,
    ),
    Case("le-nested-column", "legacy_erp", _parquet_nested, outcome="refused", refusal="unreadable_manifest"),
    Case(
        "le-duplicate-column",
        "legacy_erp",
        _parquet_duplicate_column,
        outcome="refused",
        refusal="unreadable_manifest",  # the decoded-size bound could not tell the two apart
    ),
    Case("le-invalid-utf8-string", "legacy_erp", _parquet_invalid_utf8, reasons={"invalid_text": 1}),
    Case("le-nul-in-code", "legacy_erp", _value(0, "CLASS_CODE", "D\x007"), reasons={"invalid_text": 1}),
    Case("le-largest-int64-id", "legacy_erp", _value(0, "RECORD_ID", 2**63 - 1)),
    Case("le-created-9999", "legacy_erp", _value(0, "CREATED", "31/12/9999"), reasons={"implausible_timestamp": 1}),
    Case("le-created-zero", "legacy_erp", _value(0, "CREATED", "00/00/0000"), reasons={"invalid_timestamp": 1}),
    Case(
        "le-created-as-timestamps",
        "legacy_erp",
        _parquet_created_as_timestamps,
        outcome="blocked",
        refusal="column 'CREATED' has type",
    ),
    Case(
        "le-inline-too-large",
        "legacy_erp",
        _value(0, "IMG", b"\x89PNG" + bytes(2 * 1024 * 1024)),
        reasons={"image_file_too_large": 1},
    ),
    Case("le-png-bomb", "legacy_erp", _png_bomb, reasons={"image_too_large": 1}),
    Case("le-null-image", "legacy_erp", _value(0, "IMG", None), reasons={"missing_image_reference": 1}),
    Case("le-empty", "legacy_erp", lambda b: (b.rows.clear(), b.write()), records=0),
    Case(
        "le-manifest-symlink-outside",
        "legacy_erp",
        lambda b: b.replace_with(b.manifest, _symlink_to(b.outside / "manifest.parquet")),
        outcome="refused",
        refusal="unsafe_manifest",
        records=None,
    ),
]
# Delivered last: the whole partner_api source folder becomes a link to a folder elsewhere.
SOURCE_LINK = Case(
    "pa-source-folder-link", "partner_api", outcome="refused", refusal="unsafe_batch_folder", records=None
)

REVIEWS: list[Review] = [
    Review("rv-control", lambda s: [decision(s[0], "relabel", 3), decision(s[1], "exclude")]),
    Review(
        "rv-decisions-symlink-outside", lambda s: [], outcome="refused", refusal="unsafe_manifest", link_outside=True
    ),
    Review(
        "rv-relabel-in-2200",
        lambda s: [decision(s[2], "relabel", 3, at="2200-01-01T00:00:00+00:00")],
        reasons={"implausible_timestamp": 1},
    ),
    Review("rv-relabel-ordinary-later", lambda s: [decision(s[2], "relabel", 5, at="2026-11-01T00:00:00+00:00")]),
    Review(
        "rv-whitespace-reviewer", lambda s: [decision(s[3], "exclude", reviewer="   ")], reasons={"missing_reviewer": 1}
    ),
    Review("rv-nul-in-decision", lambda s: [decision(s[4], "@@nul@@")], reasons={"invalid_text": 1}),
    Review(
        "rv-decided-year-0",
        lambda s: [decision(s[5], "exclude", at="0000-01-01T00:00:00+00:00")],
        reasons={"invalid_timestamp": 1},
    ),
    Review("rv-unknown-image", lambda s: [decision("0" * 64, "exclude")], reasons={"unknown_image": 1}),
]


# ---------------------------------------------------------------------------------------------
# The shared run


def _pools(demo_landing: Path) -> dict[str, list[dict]]:
    """Per source, the demo's records that carry no injected fault, in the writer's format."""
    faults = pd.read_csv(demo_landing.parent / "demo" / "injected_faults.csv", dtype=str)
    bad = set(zip(faults["source"], faults["record_id"]))
    pools: dict[str, list[dict]] = {"field_app": [], "partner_api": [], "legacy_erp": []}
    for batch in sorted((demo_landing / "field_app").iterdir()):
        with open(batch / "manifest.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if ("field_app", row["image_id"]) not in bad and row["label"] and (batch / row["file"]).is_file():
                    pools["field_app"].append({**row, "_image": (batch / row["file"]).read_bytes()})
    for batch in sorted((demo_landing / "partner_api").iterdir()):
        for line in (batch / "manifest.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if ("partner_api", str(rec["id"])) not in bad and rec["digit"] is not None:
                pools["partner_api"].append({**rec, "_image": (batch / rec["image_path"]).read_bytes()})
    for rec in pq.read_table(demo_landing / "legacy_erp" / "batch-0001" / "manifest.parquet").to_pylist():
        if ("legacy_erp", str(rec["RECORD_ID"])) not in bad and rec["CLASS_CODE"]:
            pools["legacy_erp"].append({**rec, "_image": None})
    return pools


def _records(source: str, pool: list[dict], start: int, n: int, case_no: int) -> list[dict]:
    """``n`` records of the pool from ``start`` on, with ids of their own (no two cases share an id)."""
    out = []
    for j in range(n):
        rec = dict(pool[(start + j) % len(pool)])
        number = 10_000_000 * (case_no + 1) + j
        if source == "field_app":
            rec["image_id"] = f"hx{case_no:03d}-{j:03d}"
            rec["file"] = f"images/{rec['image_id']}.png"
        elif source == "partner_api":
            rec["id"] = number
            rec["image_path"] = f"img/{number}.png"
        else:
            rec["RECORD_ID"] = number
        out.append(rec)
    return out


def _image_sha(source: str, rec: dict) -> str:
    return hashlib.sha256(rec["IMG"] if source == "legacy_erp" else rec["_image"]).hexdigest()


def _secret_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.tile(np.arange(8, dtype=np.uint8) * 31, (8, 1))).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Corpus:
    pipeline: object
    outside: Path
    secret_sha: str
    results: dict[str, object]
    unavailable: dict[str, str]
    controls: list[str]  # sha256 of control images, which the reviews decide about
    refresh: object = None


def _outside_files(outside: Path, pools: dict[str, list[dict]], controls: list[str]) -> str:
    """Valid-looking deliveries outside the landing zone, all marked with SECRET: any of their bytes in
    the warehouse or the object store means a link was followed."""
    outside.mkdir()
    secret = _secret_png()
    (outside / "secret.png").write_bytes(secret)
    rows = _records("field_app", pools["field_app"], 0, 3, 900)
    for i, rec in enumerate(rows):
        rec.update(image_id=f"{SECRET}-{i}", file="secret.png", _image=None)
    WRITERS["field_app"](outside / "valid_field_app_batch", rows)
    (outside / "valid_field_app_batch" / "secret.png").write_bytes(secret)
    shutil.copy(outside / "valid_field_app_batch" / "manifest.csv", outside / "manifest.csv")
    pa_rows = _records("partner_api", pools["partner_api"], 0, 3, 901)
    lines = [
        json.dumps({"id": f"{SECRET}-{i}", "image_path": "../secret.png", "digit": 3, "ts": r["ts"]})
        for i, r in enumerate(pa_rows)
    ]
    (outside / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    le = pa.table(
        {
            "RECORD_ID": pa.array([1], pa.int64()),
            "IMG": pa.array([secret]),
            "CLASS_CODE": pa.array([f"{SECRET}"]),
            "CREATED": pa.array(["01/10/2026"]),
        }
    )
    pq.write_table(le, outside / "manifest.parquet")
    write_reviews(outside / "reviews", [decision(s, "relabel", 9, reviewer=SECRET) for s in controls[:20]])
    shutil.copy(outside / "reviews" / "decisions.csv", outside / "decisions.csv")
    return hashlib.sha256(secret).hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("hostile")
    write_demo_landing(root / "demo" / "landing", seed=7)
    pools = _pools(root / "demo" / "landing")
    pipeline = make_pipeline(root / "data", demo=False)
    starts = Counter()
    rows_of = {}
    for case_no, case in enumerate(CASES):
        rows_of[case.name] = _records(case.source, pools[case.source], starts[case.source], case.size, case_no)
        starts[case.source] += case.size
    controls = [_image_sha(c.source, r) for c in CASES if c.name.endswith("-control") for r in rows_of[c.name]]
    outside = root / "outside"
    secret_sha = _outside_files(outside, pools, controls)
    results: dict[str, object] = {}
    unavailable: dict[str, str] = {}
    for case in CASES:
        rows = rows_of[case.name]
        batch = Batch(pipeline.landing / case.source / case.batch_id, case.source, rows, outside)
        batch.write()
        try:
            case.mutate(batch)
        except Unavailable as exc:
            unavailable[case.name] = str(exc)
            continue
        results[case.name] = pipeline.ingest(case.source, case.batch_id)

    for review in REVIEWS:
        batch_dir = pipeline.landing / "reviews" / review.batch_id
        filler = [decision(s) for s in controls[-20:]]
        if review.link_outside:
            write_reviews(batch_dir, filler)
            (batch_dir / "decisions.csv").unlink()
            (batch_dir / "decisions.csv").symlink_to(outside / "decisions.csv")
        else:
            write_reviews(batch_dir, filler + review.rows(controls), {"@@nul@@": b"exclude\x00relabel"})
        results[review.name] = pipeline.ingest("reviews", review.batch_id)

    # The partner_api source folder replaced by a link to a folder elsewhere holding a complete batch.
    elsewhere = outside / "partner_api_elsewhere"
    shutil.move(str(pipeline.landing / "partner_api"), elsewhere)
    shutil.copytree(outside / "valid_field_app_batch", elsewhere / SOURCE_LINK.batch_id)
    (pipeline.landing / "partner_api").symlink_to(elsewhere, target_is_directory=True)
    results[SOURCE_LINK.name] = pipeline.ingest("partner_api", SOURCE_LINK.batch_id)

    corpus = Corpus(pipeline, outside, secret_sha, results, unavailable, controls)
    corpus.refresh = pipeline.refresh_data(features=False)
    return corpus


def _evaluations(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _check_case(corpus: Corpus, case, source: str) -> None:
    if case.name in corpus.unavailable:
        pytest.skip(corpus.unavailable[case.name])
    p, result = corpus.pipeline, corpus.results[case.name]
    assert result.asset_materializations_for_node(f"raw__{source}"), "the raw asset ran to the end: no crash"
    checks = _evaluations(result)
    history = p.sql(
        "SELECT status, messages, record_count FROM raw.schema_history WHERE source = ? AND batch_id = ? "
        "ORDER BY observed_at DESC LIMIT 1",
        [source, case.batch_id],
    )
    gate = dict(
        p.sql(
            "SELECT check_name, passed FROM raw.batch_gate WHERE source = ? AND batch_id = ?", [source, case.batch_id]
        ).itertuples(index=False)
    )
    raw = p.sql(f"SELECT * FROM raw.{source} WHERE batch_id = ?", [case.batch_id])
    quarantine = p.sql(
        "SELECT reason, detail FROM clean.quarantine WHERE source = ? AND batch_id = ?", [source, case.batch_id]
    )
    taken = p.sql(
        "SELECT count(*) AS n FROM (SELECT batch_id FROM clean.lineage WHERE source = ? AND batch_id = ? "
        "UNION ALL SELECT batch_id FROM clean.review_decisions WHERE source = ? AND batch_id = ?)",
        [source, case.batch_id, source, case.batch_id],
    )["n"].item()
    status, messages = history["status"].item(), json.loads(history["messages"].item())
    records = getattr(case, "records", None)

    if case.outcome == "refused":
        assert status == "refused" and messages[0].startswith(f"{case.refusal}:"), messages
        assert case.refusal in BATCH_REFUSALS
        assert checks["schema_contract"] is False and gate.get("schema_contract") is False
        assert len(raw) == 0 and len(quarantine) == 0 and taken == 0, "a refused batch takes no record"
        if records is not None and hasattr(case, "records"):
            assert history["record_count"].item() == records
        return
    assert len(raw) == (records if records is not None else len(raw)), "one raw row per manifest record"
    assert history["record_count"].item() == len(raw)
    if case.outcome == "blocked":
        assert status == "blocked" and any(case.refusal in m for m in messages), messages
        assert gate.get("schema_contract") is False
        assert set(quarantine["reason"]) <= {"batch_blocked"} and len(quarantine) == len(raw) and taken == 0
        return
    if case.outcome == "quality":
        assert gate == {"schema_contract": True, "batch_quality": False}
        assert set(quarantine["reason"]) == {"batch_blocked"} and len(quarantine) == len(raw) and taken == 0
        assert quarantine["detail"].str.contains("batch_quality failed").all()
        return
    assert result.success, f"an accepted batch passes its blocking checks: {checks}"
    assert gate == {"schema_contract": True, "batch_quality": True}
    assert dict(Counter(quarantine["reason"])) == case.reasons, quarantine.to_dict("records")
    assert taken + len(quarantine) == len(raw), "every record accepted, a duplicate, or quarantined"
    assert set(case.reasons) <= set(REASONS)


@pytest.mark.parametrize("case", CASES + [SOURCE_LINK], ids=lambda c: c.name)
def test_image_delivery(corpus, case):
    _check_case(corpus, case, case.source)


@pytest.mark.parametrize("review", REVIEWS, ids=lambda r: r.name)
def test_review_delivery(corpus, review):
    _check_case(corpus, review, "reviews")


def test_the_cases_are_at_least_forty_over_every_format():
    sources = Counter(c.source for c in CASES)
    assert len(CASES) + len(REVIEWS) >= 40 and min(sources.values()) >= 10 and len(REVIEWS) >= 5


def test_accounting_balances_over_the_whole_corpus(corpus):
    assert corpus.refresh.success
    checks = _evaluations(corpus.refresh)
    assert checks["accounting"] and checks["clean_expectations"], checks
    refused = corpus.pipeline.sql(
        "SELECT count(DISTINCT batch_id) AS n FROM raw.schema_history WHERE status = 'refused'"
    )["n"].item()
    expected = sum(
        1 for c in [*CASES, SOURCE_LINK, *REVIEWS] if c.outcome == "refused" and c.name not in corpus.unavailable
    )
    assert refused == expected


def test_nothing_from_outside_the_batch_folder_was_read(corpus):
    p = corpus.pipeline
    objects = {f.name for f in (p.data / "objects").rglob("*") if f.is_file()}
    assert corpus.secret_sha not in objects, "the secret image reached the object store"
    for source in ("field_app", "partner_api", "legacy_erp", "reviews"):
        raw = p.sql(f"SELECT * FROM raw.{source}")
        text = raw.astype(str).to_numpy().ravel()
        assert not any(SECRET in v for v in text), f"raw.{source} holds bytes from outside the landing zone"
        if "image_sha256" in raw:
            assert corpus.secret_sha not in set(raw["image_sha256"].dropna())
    clean = p.sql("SELECT * FROM clean.images")
    assert corpus.secret_sha not in set(clean["sha256"])
    decisions = p.sql("SELECT * FROM clean.review_decisions")
    assert SECRET not in set(decisions["reviewer"]) and not (decisions["new_label"] == 9).any()


def test_values_are_kept_as_delivered(corpus):
    p = corpus.pipeline
    devices = p.sql("SELECT DISTINCT device_id FROM clean.images WHERE batch_id = 'hx-fa-leading-zero-device'")
    assert list(devices["device_id"]) == ["007"], "a leading-zero id stays the string it was"
    nul = p.sql(
        "SELECT image_ref, image_sha256 FROM raw.field_app WHERE batch_id = 'hx-fa-path-nul' AND row_number = 0"
    )
    assert nul["image_ref"].item().endswith(".png\x00.jpg") and pd.isna(nul["image_sha256"].item()), (
        "a file name is never truncated at a NUL into another one"
    )
    label = p.sql("SELECT label_raw FROM raw.legacy_erp WHERE batch_id = 'hx-le-nul-in-code' AND row_number = 0")
    assert label["label_raw"].item() == "D\x007"
    huge = p.sql("SELECT record_id FROM raw.partner_api WHERE batch_id = 'hx-pa-huge-integer-id' AND row_number = 0")
    assert huge["record_id"].item() == str(10**40)
    assert p.sql("SELECT count(*) AS n FROM clean.images WHERE record_id = ?", [str(2**63 - 1)])["n"].item() == 1


def test_review_decisions_are_plausible_and_never_truncated(corpus):
    p = corpus.pipeline
    decisions = p.sql("SELECT * FROM clean.review_decisions")
    relabels = decisions[decisions["sha256"] == corpus.controls[2]]
    assert list(relabels["new_label"]) == [5], "the relabel dated 2200 never wins over the ordinary one"
    assert corpus.controls[4] not in set(decisions["sha256"]), "'exclude\\x00relabel' is not an exclude"
    assert corpus.controls[3] not in set(decisions["sha256"]), "a blank reviewer is no reviewer"


def test_a_batch_needs_a_recorded_pass_of_every_blocking_check(tmp_path):
    """Fail closed: a batch whose batch_quality verdict is missing (the check was killed before it
    recorded one) or whose check raised stays out of clean data with a reason; its records stay accounted."""
    import duckdb
    from dagster import build_op_context

    from dc_pipeline.defs.raw.assets import build_ingestion
    from dc_pipeline.defs.resources import resources_for

    p = make_pipeline(tmp_path / "gate")
    assert p.ingest("partner_api", "batch-0001").success and p.ingest("partner_api", "batch-0002").success
    with duckdb.connect(str(p.data / "warehouse.duckdb")) as conn:  # killed before it recorded its verdict
        conn.execute("DELETE FROM raw.batch_gate WHERE batch_id = 'batch-0001' AND check_name = 'batch_quality'")
    # batch_quality of batch-0002 run again with contracts it cannot read: it raises inside its body
    broken = resources_for(p.data, contracts_dir=tmp_path / "no-contracts-here")
    batch_quality = build_ingestion("partner_api")[1]
    context = build_op_context(
        partition_key="batch-0002", resources={"lake": broken["lake"], "warehouse": broken["warehouse"]}
    )
    assert batch_quality(context).passed is False, "a check that raised is a failure"
    gate = p.sql(
        "SELECT passed, detail FROM raw.batch_gate WHERE batch_id = 'batch-0002' AND check_name = 'batch_quality'"
    )
    assert not gate["passed"].item() and "did not complete" in gate["detail"].item()
    refreshed = p.refresh_data(features=False)
    assert _evaluations(refreshed)["accounting"]
    q = p.sql("SELECT batch_id, reason, detail FROM clean.quarantine")
    assert set(q["reason"]) == {"batch_blocked"} and set(q["batch_id"]) == {"batch-0001", "batch-0002"}
    details = q.groupby("batch_id")["detail"].first()
    assert "batch_quality: check did not complete" in details["batch-0001"]
    assert "batch_quality failed: check did not complete: ContractError" in details["batch-0002"]
    assert p.sql("SELECT count(*) AS n FROM clean.images")["n"].item() == 0


# ---------------------------------------------------------------------------------------------
# The landing scan, memory bounds and the registry


def test_the_landing_scan_skips_links_and_never_hangs_on_fifos(tmp_path):
    landing, outside = tmp_path / "landing", tmp_path / "outside"
    write_demo_landing(landing, seed=7)
    outside.mkdir()
    os.mkfifo(landing / "a-fifo")
    os.mkfifo(landing / "field_app" / "batch-fifo")
    shutil.copytree(landing / "field_app" / "batch-0001", outside / "b")
    (landing / "field_app" / "batch-link").symlink_to(outside / "b", target_is_directory=True)
    fifo_marker = landing / "field_app" / "batch-marker-fifo"
    shutil.copytree(landing / "field_app" / "batch-0002", fifo_marker)
    (fifo_marker / "_SUCCESS").unlink()
    os.mkfifo(fifo_marker / "_SUCCESS")
    fifo_manifest = landing / "field_app" / "batch-manifest-fifo"
    shutil.copytree(landing / "field_app" / "batch-0002", fifo_manifest)
    (fifo_manifest / "manifest.csv").unlink()
    os.mkfifo(fifo_manifest / "manifest.csv")
    huge = landing / "partner_api" / "batch-huge"
    shutil.copytree(landing / "partner_api" / "batch-0001", huge)
    _sparse(300 * 1024 * 1024)(huge / "manifest.jsonl")
    shutil.move(str(landing / "legacy_erp"), outside / "legacy_erp")
    (landing / "legacy_erp").symlink_to(outside / "legacy_erp", target_is_directory=True)

    found, warnings = [], []
    manifests = {**MANIFEST, "reviews": "decisions.csv"}
    scan = threading.Thread(target=lambda: found.extend(scan_landing(landing, manifests, warnings.append)), daemon=True)
    scan.start()
    scan.join(timeout=120)
    assert not scan.is_alive(), "the landing scan hangs on a FIFO"
    keys = {b.key for b in found}
    assert {"field_app/batch-0001", "field_app/batch-0002", "partner_api/batch-0001"} <= keys
    assert "partner_api/batch-huge" in keys, "listed unread, so ingestion records why it refuses it"
    skipped = {
        "field_app/batch-link",
        "field_app/batch-fifo",
        "field_app/batch-marker-fifo",
        "field_app/batch-manifest-fifo",
    }
    assert not skipped & keys and not any(b.source == "legacy_erp" for b in found)
    for name in ("batch-marker-fifo", "batch-manifest-fifo", "batch-fifo", "a-fifo"):
        assert any(name in w for w in warnings), (name, warnings)
    assert any("batch-link" in w and "link" in w for w in warnings)
    assert any("legacy_erp" in w and "link" in w for w in warnings)
    ok = hashlib.sha256((landing / "field_app" / "batch-0001" / "manifest.csv").read_bytes()).hexdigest()
    assert next(b for b in found if b.key == "field_app/batch-0001").manifest_sha256 == ok


def test_a_parquet_bomb_is_refused_in_bounded_memory(tmp_path):
    """100,000 rows repeating one 20 KB value: 2 GB once decoded, a few KB on disk."""
    n = 100_000
    index = pa.array(np.zeros(n, dtype=np.int32))
    table = pa.table(
        {
            "RECORD_ID": pa.array(np.arange(n, dtype=np.int64)),
            "IMG": pa.DictionaryArray.from_arrays(index, pa.array([bytes(20 * 1024)])),
            "CLASS_CODE": pa.DictionaryArray.from_arrays(index, pa.array(["D1"])),
            "CREATED": pa.DictionaryArray.from_arrays(index, pa.array(["01/10/2026"])),
        }
    )
    batch = tmp_path / "b"
    batch.mkdir()
    pq.write_table(table, batch / "manifest.parquet", compression="zstd")
    assert (batch / "manifest.parquet").stat().st_size < 1024 * 1024
    code = (
        "import sys\n"
        "from dc_pipeline.core.data.contracts import load_contracts\n"
        "from dc_pipeline.core.data.manifests import ManifestError, read_manifest\n"
        "from dc_pipeline.settings import PACKAGED_CONTRACTS\n"
        "c = load_contracts(PACKAGED_CONTRACTS)\n"
        "try:\n"
        "    read_manifest(sys.argv[1], c['legacy_erp'], c.project.manifests)\n"
        "    print('read')\n"
        "except ManifestError as exc:\n"
        "    print(exc.reason)\n"
        # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would report pytest's own peak
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(batch)], capture_output=True, text=True, check=True)
    reason, peak_mib = out.stdout.split()
    assert reason == "manifest_too_large"
    assert int(peak_mib) < 1024, f"peak {peak_mib} MiB: the values were decoded"


def _registered_champion(data: Path):
    import torch

    from dc_pipeline.core.ml.registry import Registry
    from dc_pipeline.warehouse.connect import connect

    with connect(data / "warehouse.duckdb", data) as conn:
        registry = Registry(conn, data / "artifacts")
        state = {"layer.weight": torch.ones(2, 2)}
        vid, _ = registry.register(
            "augmix",
            state,
            dataset_hash="d" * 64,
            code={"commit": "c", "dirty": False, "label": "c"},
            config={},
            seed=0,
            model_spec={"classes": [0, 1]},
            run_id=None,
        )
        registry.set_alias("champion", vid, "test")
        return vid, data / registry.find(vid)["weights_path"]


@pytest.mark.parametrize("tamper", ["absolute-path-outside", "weights-file-link", "models-folder-link"])
def test_load_model_never_reads_weights_outside_the_data_folder(tmp_path, tamper):
    """The weights' sha256 matches: only containment refuses them."""
    import duckdb

    from dc_pipeline.api import load_model
    from dc_pipeline.core.ml.registry import RegistryError

    data, outside = tmp_path / "data", tmp_path / "outside"
    vid, weights = _registered_champion(data)
    outside.mkdir()
    copy = outside / "w.safetensors"
    shutil.copy(weights, copy)
    if tamper == "absolute-path-outside":
        with duckdb.connect(str(data / "warehouse.duckdb")) as conn:
            conn.execute("UPDATE registry.models SET weights_path = ? WHERE version_id = ?", [str(copy), vid])
    elif tamper == "weights-file-link":
        weights.unlink()
        weights.symlink_to(copy)
    else:
        models = data / "artifacts" / "models"
        shutil.move(str(models), outside / "models")
        models.symlink_to(outside / "models", target_is_directory=True)
    with pytest.raises(RegistryError, match="data folder"):
        load_model("champion", data_dir=data)


def test_every_reason_code_is_documented():
    codes = {c for case in [*CASES, *REVIEWS] for c in case.reasons}
    assert codes <= set(REASONS), codes - set(REASONS)
    refusals = {c.refusal for c in [*CASES, SOURCE_LINK, *REVIEWS] if c.outcome == "refused"}
    assert refusals <= set(BATCH_REFUSALS)
    assert datetime.now(UTC).year < 2200  # the 2200 relabel is in the future
