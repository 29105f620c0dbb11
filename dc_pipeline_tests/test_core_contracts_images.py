"""Core pieces on their own: contracts, labels, timestamps, image validation, the object store."""

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dc_pipeline.core.data.contracts import load_contracts, normalize_label, parse_timestamp
from dc_pipeline.core.data.images import ImageRejected, ObjectStore, inspect_image
from dc_pipeline.settings import PACKAGED_CONTRACTS

CONTRACTS = load_contracts(PACKAGED_CONTRACTS)
CLASSES = CONTRACTS.project.classes


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "source,raw,expected",
    [
        ("partner_api", "seven", (7, None)),
        ("partner_api", " Seven ", (7, None)),
        ("partner_api", 3, (3, None)),
        ("partner_api", "eleven", (None, "unknown_label")),
        ("partner_api", None, (None, "missing_label")),
        ("partner_api", "12", (None, "unknown_label")),
        ("legacy_erp", "D7", (7, None)),
        ("legacy_erp", "7", (None, "unknown_label")),
        ("field_app", "4", (4, None)),
        ("field_app", "", (None, "missing_label")),
    ],
)
def test_label_vocabularies(source, raw, expected):
    assert normalize_label(raw, CONTRACTS[source], CLASSES) == expected


def test_timestamps_are_parsed_to_utc_per_contract():
    assert (
        parse_timestamp("2026-10-08T21:51:02-05:00", CONTRACTS["field_app"]).isoformat() == "2026-10-09T02:51:02+00:00"
    )
    assert parse_timestamp("2026-10-08T21:51:02", CONTRACTS["field_app"]) is None, "no offset, ambiguous"
    assert parse_timestamp(1792565865000, CONTRACTS["partner_api"]).isoformat() == "2026-10-21T06:57:45+00:00"
    assert parse_timestamp("31/12/2026", CONTRACTS["legacy_erp"]).isoformat() == "2026-12-31T00:00:00+00:00"
    assert parse_timestamp("12/31/2026", CONTRACTS["legacy_erp"]) is None


def test_image_validation_reasons():
    project = CONTRACTS.project
    ok = inspect_image(png(np.zeros((8, 8), np.uint8)), project)
    assert (ok.width, ok.height, ok.channels) == (8, 8, 1)
    assert inspect_image(png(np.zeros((16, 16, 3), np.uint8)), project).channels == 3
    cases = {
        "undecodable_image": png(np.full((8, 8), 200, np.uint8))[:40],
        "image_dimensions_out_of_bounds": png(np.zeros((2, 8), np.uint8)),
        "unsupported_mode": png(np.zeros((8, 8, 4), np.uint8)),
    }
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(jpeg, format="JPEG")
    cases["unsupported_format"] = jpeg.getvalue()
    for reason, data in cases.items():
        with pytest.raises(ImageRejected) as info:
            inspect_image(data, project)
        assert info.value.reason == reason


def test_decompression_bomb_is_refused_before_decoding():
    """A tiny PNG whose header claims 50,000 x 50,000 pixels is refused from its header alone."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageRejected) as info:
        inspect_image(bomb, CONTRACTS.project)
    assert info.value.reason == "image_too_large"


def test_object_store_is_content_addressed_and_never_overwrites(tmp_path):
    store = ObjectStore(tmp_path)
    sha = store.put(b"hello")
    assert store.put(b"hello") == sha and store.get(sha) == b"hello"
    store.path(sha).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="corrupt"):
        store.get(sha)


def test_definitions_import_without_heavy_libraries():
    code = (
        "import sys, dc_pipeline.definitions as d; d.defs().resolve_asset_graph(); "
        "heavy = [m for m in ('torch', 'torchvision', 'great_expectations', 'sklearn') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={"DC_DATA_DIR": "/tmp/x", "DC_WAREHOUSE": "/tmp/x/w.duckdb", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
