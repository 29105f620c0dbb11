"""The audit trail: who or what launched, re-ran or cancelled runs, moved aliases and changed labels, and why."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import torch
from dagster import DagsterInstance, materialize
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.test_utils import create_run_for_test

from dc_pipeline.catalog import T
from dc_pipeline.core.governance.audit import ACTOR_TAG, REASON_TAG, UNAUTHENTICATED, run_actor
from dc_pipeline.core.ml.registry import Registry
from dc_pipeline.defs.registry.assets import audit_trail
from dc_pipeline.defs.resources import resources_for
from dc_pipeline.ops.materialize import actor_tags
from dc_pipeline.warehouse.connect import connect
from dc_pipeline.warehouse.io import append_rows


def test_audit_trail_records_who_did_what_and_why(tmp_path) -> None:
    instance = DagsterInstance.ephemeral()
    by_sensor = create_run_for_test(
        instance,
        job_name="retrain",
        status=DagsterRunStatus.SUCCESS,
        tags={"dagster/sensor_name": "retraining_trigger"},
    )
    cancelled = create_run_for_test(instance, job_name="refresh_downstream", status=DagsterRunStatus.CANCELED)
    rerun = create_run_for_test(
        instance,
        job_name="retrain",
        status=DagsterRunStatus.SUCCESS,
        parent_run_id=by_sensor.run_id,
        root_run_id=by_sensor.run_id,
        tags={"dagster/schedule_name": "weekly_full_retrain"},
    )
    with connect(tmp_path / "warehouse.duckdb", tmp_path) as conn:
        registry = Registry(conn, tmp_path / "artifacts")
        version, _ = registry.register(
            "augmix", {"w": torch.zeros(2)}, dataset_hash="d" * 64, code={}, config={}, seed=0,
            model_spec={"classes": [0, 1]}, run_id=by_sensor.run_id,
        )  # fmt: skip
        registry.set_alias("champion", version, "promoted: mCE better beyond noise", run_id=by_sensor.run_id)
        review = {
            "sha256": "a" * 64, "decision": "relabel", "new_label": 7, "reviewer": "bob", "reason": "looks like a 7",
            "decided_at": dt.datetime(2026, 11, 27, 9, 0), "source": "reviews", "batch_id": "r-1", "row_number": 3,
        }  # fmt: skip
        append_rows(conn, T.REVIEW_DECISIONS, pd.DataFrame([review]))

    tags = {ACTOR_TAG: "dc-pipeline:alice", REASON_TAG: "quarterly audit"}
    first = materialize([audit_trail], instance=instance, resources=resources_for(tmp_path), tags=tags)
    assert first.success
    with connect(tmp_path / "warehouse.duckdb", tmp_path) as conn:
        events = conn.execute(f"SELECT * FROM {T.AUDIT_EVENTS}").df().set_index("event_id")

    def event(event_id: str) -> pd.Series:
        return events.loc[event_id]

    assert event(f"run:{by_sensor.run_id}:start")[["actor", "action"]].tolist() == [
        "sensor:retraining_trigger",
        "run_launched",
    ]
    assert event(f"run:{cancelled.run_id}:cancel")[["actor", "action"]].tolist() == [UNAUTHENTICATED, "run_cancelled"]
    rerun_event = event(f"run:{rerun.run_id}:start")
    assert rerun_event["action"] == "run_reexecuted" and rerun_event["actor"] == "schedule:weekly_full_retrain"
    assert rerun_event["detail"] == f"re-execution of {by_sensor.run_id}"
    own = event(f"run:{first.run_id}:start")
    assert own[["actor", "reason", "subject"]].tolist() == [
        "dc-pipeline:alice",
        "quarterly audit",
        "job __ephemeral_asset_job__",
    ]
    moves = events[events["action"] == "alias_moved"]
    assert len(moves) == 1 and moves.iloc[0]["actor"] == "sensor:retraining_trigger"
    assert (
        moves.iloc[0]["reason"] == "promoted: mCE better beyond noise"
        and moves.iloc[0]["detail"] == f"(none) -> {version}"
    )
    relabel = events[events["action"] == "review_relabel"].iloc[0]
    assert relabel[["actor", "detail", "reason"]].tolist() == ["reviewer:bob", "label -> 7", "looks like a 7"]

    second = materialize([audit_trail], instance=instance, resources=resources_for(tmp_path))
    assert second.success
    with connect(tmp_path / "warehouse.duckdb", tmp_path) as conn:
        again = conn.execute(f"SELECT event_id, actor FROM {T.AUDIT_EVENTS}").df()
    assert again["event_id"].is_unique and len(again) == len(events) + 1  # only the second run's own launch
    assert again.set_index("event_id").loc[f"run:{second.run_id}:start", "actor"] == UNAUTHENTICATED


def test_run_actors_and_the_commands_tag() -> None:
    assert run_actor({"dagster/backfill": "abc"}) == "backfill:abc"
    assert run_actor({}) == UNAUTHENTICATED
    assert actor_tags()[ACTOR_TAG].startswith("dc-pipeline:")


def test_the_viewers_ui_is_read_only(tmp_path) -> None:
    """`dc-pipeline ui --viewer-port` serves this: the same code and instance, and nothing can be launched."""
    from dc_pipeline.ops.loopback import graphql
    from dc_pipeline.ops.webui import served_ui

    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {"DC_DATA_DIR": str(tmp_path / "data"), "GX_ANALYTICS_ENABLED": "false"}
    with served_ui(home, env, tmp_path / "webserver.log", read_only=True) as url:
        permissions = graphql(url, "{ permissions { permission value } }")["data"]["permissions"]
        allowed = {p["permission"]: p["value"] for p in permissions}
        assert allowed["launch_pipeline_execution"] is False and allowed["terminate_pipeline_execution"] is False
        assert allowed["wipe_assets"] is False and allowed["start_schedule"] is False
        launch = graphql(
            url,
            "mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) { __typename } }",
            {"p": {"selector": {"repositoryLocationName": "dc_pipeline.definitions", "repositoryName": "__repository__",
                                "pipelineName": "retrain"}, "mode": "default"}},
        )  # fmt: skip
        assert launch["data"]["launchPipelineExecution"]["__typename"] == "UnauthorizedError"
