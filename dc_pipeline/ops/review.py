"""A simulated reviewer for the demo: answers the review queue from the known label flips."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path


def simulate_review(
    data_dir: Path,
    top: int = 0,
    batch_id: str | None = None,
    ground_truth: Path | None = None,
    warehouse: Path | None = None,
) -> tuple[Path, dict]:
    """A reviewer who knows the truth: relabel the queue's images whose label is wrong, confirm the others."""
    from datetime import datetime

    import pandas as pd

    from dc_pipeline.core.data.manifests import SUCCESS_MARKER
    from dc_pipeline.warehouse.connect import read_warehouse

    data = Path(data_dir)
    db = Path(warehouse or data / "warehouse.duckdb")
    truth = pd.read_csv(ground_truth or data / "demo" / "label_flips.csv", dtype={"record_id": str})
    with read_warehouse(db) as conn:
        queue = conn.execute("SELECT sha256, given_label FROM curation.review_queue ORDER BY rank").df()
        lineage = conn.execute("SELECT DISTINCT source, record_id, sha256 FROM clean.lineage").df()
    if top:
        queue = queue.head(top)
    true_label = dict(truth.merge(lineage, on=["source", "record_id"])[["sha256", "true_label"]].values.tolist())
    now = datetime.now(UTC)
    rows = []
    for sha, given in zip(queue["sha256"], queue["given_label"]):
        right = true_label.get(sha, given)
        wrong = int(right) != int(given)
        rows.append(
            {
                "image_sha256": sha,
                "decision": "relabel" if wrong else "confirm",
                "new_label": int(right) if wrong else "",
                "reviewer": "simulated-reviewer",
                "reason": "the label shows another digit" if wrong else "label checked",
                "decided_at": now.isoformat(timespec="seconds"),
            }
        )
    batch_id = batch_id or f"review-{now:%Y%m%d%H%M%S}"
    folder = data / "landing" / "reviews" / batch_id
    folder.mkdir(parents=True, exist_ok=False)
    pd.DataFrame(rows, columns=["image_sha256", "decision", "new_label", "reviewer", "reason", "decided_at"]).to_csv(
        folder / "decisions.csv", index=False
    )
    (folder / SUCCESS_MARKER).write_text(now.isoformat())
    return folder, pd.Series([r["decision"] for r in rows], dtype=object).value_counts().to_dict()
