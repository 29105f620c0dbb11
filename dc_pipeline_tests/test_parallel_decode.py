"""Large batches are decoded on every core: worker processes give exactly what one process gives."""

import numpy as np

from dc_pipeline.core import parallel
from dc_pipeline.core.data.contracts import load_contracts
from dc_pipeline.core.data.images import ImageRejected, ObjectStore, canonical_stored, inspect_stored
from dc_pipeline.demo.landing import load_digits_uint8, png_bytes
from dc_pipeline.settings import PACKAGED_CONTRACTS


def test_worker_processes_decode_exactly_as_one_process(tmp_path, monkeypatch):
    images, _ = load_digits_uint8()
    store = ObjectStore(tmp_path / "objects")
    shas = [store.put(png_bytes(images[i])) for i in range(40)] + [store.put(b"not an image")]
    project = load_contracts(PACKAGED_CONTRACTS).project
    serial_info = inspect_stored(shas, str(store.root), project)
    serial_x = canonical_stored(shas[:-1], str(store.root), 28)

    monkeypatch.setattr(parallel, "MIN_PARALLEL", 2)
    parts = parallel.map_chunks(inspect_stored, shas, str(store.root), project, processes=2)
    assert len(parts) == 2  # two chunks, one per worker process
    info = [r for part in parts for r in part]
    assert [getattr(r, "reason", None) for r in info] == [getattr(r, "reason", None) for r in serial_info]
    assert isinstance(info[-1], ImageRejected) and info[-1].reason == "undecodable_image"
    assert [(r.width, r.height, r.mode) for r in info[:-1]] == [(r.width, r.height, r.mode) for r in serial_info[:-1]]
    x = np.concatenate(parallel.map_chunks(canonical_stored, shas[:-1], str(store.root), 28, processes=2))
    assert np.array_equal(x, serial_x)
