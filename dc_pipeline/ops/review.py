"""A simulated reviewer for the demo: answers the review queue from the known label flips."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path


def simulate_review(
    data_dir: Path,
    top: int = 0,
    batch_id: str | None = None,
    ground_truth: Path | None = None,
    warehouse: str | Path | None = None,
) -> tuple[Path, dict]:
    """A reviewer who knows the truth: relabel the queue's images whose label is wrong, confirm the others."""
    from datetime import datetime

    import pandas as pd

    from dc_pipeline.core.data.manifests import SUCCESS_MARKER
    from dc_pipeline.warehouse.connect import read_warehouse

    data = Path(data_dir)
    db = str(warehouse or data / "warehouse.duckdb")  # a Path would mangle a postgresql:// URL
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


def simulate_labelling(
    data_dir: Path, top: int = 0, batch_id: str | None = None, warehouse: str | Path | None = None
) -> tuple[Path | None, dict]:
    """A labeller who knows the withheld digits: answer the open items of the labelling queue (picked by
    active learning, not yet answered) with a ``label`` decision, as a reviews batch. Items whose record
    the demo did not deliver unlabelled are left open and counted."""
    from datetime import datetime

    import pandas as pd

    from dc_pipeline.catalog import T
    from dc_pipeline.core.data.manifests import SUCCESS_MARKER
    from dc_pipeline.demo.landing import UNLABELLED_TRUTH
    from dc_pipeline.warehouse.backend import is_postgres
    from dc_pipeline.warehouse.connect import read_warehouse
    from dc_pipeline.warehouse.io import table_exists

    data = Path(data_dir)
    truth_file = data / "demo" / UNLABELLED_TRUTH
    if not truth_file.is_file():
        return None, {"reason": f"{truth_file} not found: deliver unlabelled batches with demo-batch --unlabelled"}
    truth = pd.read_csv(truth_file, dtype={"record_id": str}).drop_duplicates(["source", "record_id"], keep="last")
    db = str(warehouse or data / "warehouse.duckdb")
    if not is_postgres(db) and not Path(db).is_file():
        return None, {"reason": f"no warehouse at {db} yet: nothing has been ingested"}
    with read_warehouse(db) as conn:
        if not table_exists(conn, T.LABELLING_QUEUE):
            return None, {"reason": "no labelling queue yet"}
        queue = conn.execute(
            f"SELECT q.sha256 FROM {T.LABELLING_QUEUE} q WHERE q.sha256 NOT IN (SELECT image_sha256 FROM "
            f"{T.REVIEW_ROWS} WHERE decision IN ('label', 'relabel', 'exclude')) ORDER BY q.queued_at, q.rank"
        ).df()
        lineage = conn.execute(f"SELECT DISTINCT source, record_id, sha256 FROM {T.LINEAGE}").df()
    if top:
        queue = queue.head(top)
    known = truth.merge(lineage, on=["source", "record_id"]).drop_duplicates("sha256")
    true_label = dict(zip(known["sha256"], known["true_label"]))
    answered = queue[queue["sha256"].isin(true_label)]
    counts = {"label": int(len(answered)), "left_open": int(len(queue) - len(answered))}
    if answered.empty:
        return None, counts
    now = datetime.now(UTC)
    rows = pd.DataFrame(
        {
            "image_sha256": answered["sha256"],
            "decision": "label",
            "new_label": [int(true_label[s]) for s in answered["sha256"]],
            "reviewer": "simulated-labeller",
            "reason": "labelled from the labelling queue",
            "decided_at": now.isoformat(timespec="seconds"),
        }
    )
    batch_id = batch_id or f"labels-{now:%Y%m%d%H%M%S}"
    folder = data / "landing" / "reviews" / batch_id
    folder.mkdir(parents=True, exist_ok=False)
    rows.to_csv(folder / "decisions.csv", index=False)
    (folder / SUCCESS_MARKER).write_text(now.isoformat())
    return folder, counts
