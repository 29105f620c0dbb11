"""Near-duplicates on the demo: how many pairs would straddle train and test without the split guard.

Ingests the demo landing zone (seed 7) through the real raw, cleaning and features assets into a temporary data
folder, then counts the near-duplicate pairs the features run found and, for each, whether its two images would
lie in different splits if each took the split of its own content hash (before the guard), against the splits the
dataset version gave them (with the guard: from the group's anchor). Also counts the pairs the rule finds among
all 1,797 digits as scikit-learn ships them (natural near-duplicates), with their labels.

    .venv/bin/python benchmarks/near_duplicates.py [--out benchmarks/results/near_duplicates.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


def ingest_demo(data: Path):
    from dagster import DagsterInstance, materialize

    from dc_pipeline.catalog import DATASET_VERSION, DECISIONS, IMAGE_STATS, IMAGES, LINEAGE, QUARANTINE, batches_of
    from dc_pipeline.defs import build_definitions
    from dc_pipeline.defs.raw.assets import build_ingestion
    from dc_pipeline.defs.resources import resources_for
    from dc_pipeline.demo.landing import write_demo_landing

    write_demo_landing(data / "landing", seed=7)
    resources, instance = resources_for(data), DagsterInstance.ephemeral()
    for source_dir in sorted((data / "landing").iterdir()):
        for batch in sorted(p.name for p in source_dir.iterdir()):
            instance.add_dynamic_partitions(batches_of(source_dir.name).name, [batch])
            result = materialize(
                build_ingestion(source_dir.name), partition_key=batch, instance=instance, resources=resources
            )
            assert result.success, f"{source_dir.name}/{batch}"
    job = build_definitions(resources).resolve_job_def("refresh_downstream")
    selection = [IMAGES, QUARANTINE, LINEAGE, DECISIONS, DATASET_VERSION, IMAGE_STATS]
    assert job.execute_in_process(instance=instance, asset_selection=selection, run_config={}).success


def demo_figures(data: Path) -> dict:
    import duckdb

    from dc_pipeline.core.data.features import split_of

    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as conn:
        pairs = conn.execute("SELECT sha256_a, sha256_b, distance FROM features.near_duplicates").df()
        members = dict(conn.execute("SELECT sha256, split FROM features.members").fetchall())
        head = conn.execute("SELECT split_salt, val_share, test_share FROM features.head").fetchall()[0]
        labels = dict(conn.execute("SELECT sha256, label FROM features.members").fetchall())

    def own(sha: str) -> str:
        return split_of(sha, *head)

    rows = [(a, b) for a, b in zip(pairs["sha256_a"], pairs["sha256_b"]) if a in members and b in members]
    before = [(own(a), own(b)) for a, b in rows]
    after = [(members[a], members[b]) for a, b in rows]

    def straddles(splits, which=("train", "test")) -> int:
        return sum(1 for x, y in splits if x != y and {x, y} == set(which))

    return {
        "pairs": len(pairs),
        "pairs_between_members": len(rows),
        "same_label": sum(labels[a] == labels[b] for a, b in rows),
        "train_test_before": straddles(before),
        "any_split_before": sum(x != y for x, y in before),
        "train_test_after": straddles(after),
        "any_split_after": sum(x != y for x, y in after),
    }


def natural_pairs() -> dict:
    import numpy as np

    from dc_pipeline.core.curation import data_issues as di
    from dc_pipeline.core.data.images import thumbnail_array
    from dc_pipeline.demo.landing import load_digits_uint8, png_bytes

    images, labels = load_digits_uint8()
    x = np.stack([thumbnail_array(png_bytes(im), di.FINGERPRINT_SIZE) for im in images])
    fp = di.fingerprints(x)
    fp["sha256"] = [f"{i:05d}" for i in range(len(x))]
    started = time.perf_counter()
    pairs = di.near_duplicate_pairs(fp, fp.iloc[:0])
    seconds = time.perf_counter() - started
    groups = Counter(di.components(pairs).values())
    a, b = pairs["sha256_a"].astype(int).to_numpy(), pairs["sha256_b"].astype(int).to_numpy()
    return {
        "images": len(x),
        "pairs": len(pairs),
        "different_labels": int((labels[a] != labels[b]).sum()),
        "largest_group": max(groups.values()) if groups else 0,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/near_duplicates.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ingest_demo(Path(tmp))
        demo = demo_figures(Path(tmp))
        ingest_seconds = time.perf_counter() - started
    natural = natural_pairs()
    lines = [
        "# Near-duplicates on the demo, before and after the split guard",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}; Python {platform.python_version()}; "
        f"os.cpu_count() = {os.cpu_count()}; demo ingestion and features {ingest_seconds:.0f} s",
        "- command: `.venv/bin/python benchmarks/near_duplicates.py`",
        "- rule: 64-bit difference hash of a 16x16 box-resampled thumbnail, at most 3 differing bits, and "
        "thumbnails within a mean absolute difference of 0.03 after removing the mean difference",
        "",
        "| demo (seed 7) | count |",
        "|---|---:|",
        f"| near-duplicate pairs found | {demo['pairs']} |",
        f"| pairs whose two images are both dataset members | {demo['pairs_between_members']} |",
        f"| of those, with the same label | {demo['same_label']} |",
        f"| straddling train and test without the guard (split from each image's own hash) | "
        f"{demo['train_test_before']} |",
        f"| in different splits of any kind without the guard | {demo['any_split_before']} |",
        f"| straddling train and test with the guard (split from the group's anchor) | {demo['train_test_after']} |",
        f"| in different splits of any kind with the guard | {demo['any_split_after']} |",
        "",
        "| all of scikit-learn's digits | count |",
        "|---|---:|",
        f"| images | {natural['images']} |",
        f"| near-duplicate pairs (natural, none injected) | {natural['pairs']} |",
        f"| of those, with different labels | {natural['different_labels']} |",
        f"| largest group | {natural['largest_group']} |",
        f"| seconds to find them (band join + verification) | {natural['seconds']:.3f} |",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
