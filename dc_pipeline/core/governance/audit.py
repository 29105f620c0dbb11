"""Who or what did what, and why: the audit trail's events, built from the records the pipeline already keeps.

Sources: the Dagster instance's runs (launched, re-executed, cancelled; the actor from the run's tags), the
registry's alias history (every move of ``champion`` / ``challenger`` with its reason and run), and the
accepted review decisions (label changes and exclusions, with the reviewer and reason). Every event has a
deterministic ``event_id``, so collecting the same record twice adds it once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

ACTOR_TAG = "dc-pipeline/actor"
REASON_TAG = "dc-pipeline/reason"
UNAUTHENTICATED = "web UI or GraphQL (no user: Dagster OSS does not authenticate)"
EVENT_COLUMNS = [
    "event_id",
    "occurred_at",
    "actor",
    "action",
    "subject",
    "detail",
    "reason",
    "dagster_run_id",
    "origin",
]


def run_actor(tags: Mapping[str, str]) -> str:
    """Who started a run, from its tags: the dc-pipeline command (with the OS user), a sensor, a schedule, a
    backfill, or the web UI / GraphQL API, where Dagster OSS records no user."""
    if tags.get(ACTOR_TAG):
        return tags[ACTOR_TAG]
    if tags.get("dagster/sensor_name"):
        return f"sensor:{tags['dagster/sensor_name']}"
    if tags.get("dagster/schedule_name"):
        return f"schedule:{tags['dagster/schedule_name']}"
    if tags.get("dagster/backfill"):
        return f"backfill:{tags['dagster/backfill']}"
    return UNAUTHENTICATED


def run_events(runs: Iterable[Mapping]) -> pd.DataFrame:
    """``runs``: ``run_id``, ``job_name``, ``status`` (a Dagster run status name), ``tags``, ``created_at``,
    ``ended_at`` and ``parent_run_id`` (set on re-executions). Launch (or re-execution, when the run has a
    parent) and cancellation events."""
    rows = []
    for run in runs:
        tags = run["tags"]
        actor = run_actor(tags)
        parent = run.get("parent_run_id") or tags.get("dagster/parent_run_id")
        partition = tags.get("dagster/partition")
        subject = f"job {run['job_name']}" + (f" partition {partition}" if partition else "")
        action = "run_reexecuted" if parent else "run_launched"
        detail = f"re-execution of {parent}" if parent else None
        rows.append(
            [f"run:{run['run_id']}:start", run["created_at"], actor, action, subject, detail, tags.get(REASON_TAG),
             run["run_id"], "dagster_runs"]
        )  # fmt: skip
        if run["status"] == "CANCELED":
            rows.append(
                [f"run:{run['run_id']}:cancel", run["ended_at"] or run["created_at"], UNAUTHENTICATED, "run_cancelled",
                 subject, None, None, run["run_id"], "dagster_runs"]
            )  # fmt: skip
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def alias_events(history: pd.DataFrame, actors: Mapping[str, str]) -> pd.DataFrame:
    """``registry.alias_history`` rows; the actor is the actor of the run that moved the alias (``actors``:
    run id -> actor), or the dc-pipeline command when no run did."""
    rows = []
    for r in history.itertuples(index=False):
        actor = actors.get(r.dagster_run_id, UNAUTHENTICATED) if r.dagster_run_id else "dc-pipeline (no run)"
        rows.append(
            [f"alias:{r.alias}:{r.moved_at.isoformat()}:{r.to_version}", r.moved_at, actor, "alias_moved",
             f"alias {r.alias}", f"{r.from_version or '(none)'} -> {r.to_version}", r.reason, r.dagster_run_id,
             "registry.alias_history"]
        )  # fmt: skip
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def review_events(decisions: pd.DataFrame) -> pd.DataFrame:
    """Accepted review decisions (``clean.review_decisions``): label changes and exclusions, by their reviewer."""
    rows = []
    for r in decisions.itertuples(index=False):
        detail = f"label -> {int(r.new_label)}" if pd.notna(r.new_label) else None
        rows.append(
            [f"review:{r.source}:{r.batch_id}:{r.row_number}", r.decided_at, f"reviewer:{r.reviewer}",
             f"review_{r.decision}", f"image {r.sha256}", detail, r.reason, None, "clean.review_decisions"]
        )  # fmt: skip
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)
