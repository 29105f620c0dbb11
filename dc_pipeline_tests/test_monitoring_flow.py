"""End to end: a drifted batch lands, the real sensors ingest it, score it, report drift and ask for retraining."""

import json

from dagster import SkipReason, build_sensor_context

from dc_pipeline.defs.automation.sensors import build_landing_sensor, retraining_trigger
from dc_pipeline.defs.resources import RetrainPolicy
from dc_pipeline.demo.batches import write_demo_batch

from .conftest import SOURCES


def run_sensor_requests(pipeline, result):
    """Do what the daemon does with a landing-sensor result: add partitions, launch the runs."""
    for req in result.dynamic_partitions_requests:
        pipeline.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    outcomes = []
    for request in result.run_requests:
        job = pipeline.defs.resolve_job_def(request.job_name)
        outcomes.append(
            job.execute_in_process(
                partition_key=request.partition_key, instance=pipeline.instance, tags=request.tags, raise_on_error=False
            )
        )
    return outcomes


def test_drifted_batch_is_ingested_scored_reported_and_triggers_retraining(pipeline):
    pipeline.ingest_all()
    assert pipeline.refresh().success  # trains and promotes a champion
    resources = pipeline.resources
    landing_sensor = build_landing_sensor(SOURCES)
    first = landing_sensor(build_sensor_context(instance=pipeline.instance, resources=resources))
    cursor = first.cursor  # the initial batches are known; from here on only new batches matter

    rotated = write_demo_batch(pipeline.landing, "partner_api", n=150, drift="rotate", seed=1)
    calm = write_demo_batch(pipeline.landing, "field_app", n=150, drift="none", seed=2)
    result = landing_sensor(build_sensor_context(instance=pipeline.instance, resources=resources, cursor=cursor))
    assert sorted(r.partition_key for r in result.run_requests) == sorted([rotated.name, calm.name])
    runs = run_sensor_requests(pipeline, result)
    assert all(r.success for r in runs), [r.run_id for r in runs if not r.success]

    verdicts = pipeline.sql("SELECT source, batch_id, verdict, reasons, thresholds FROM monitoring.drift_verdicts")
    by_batch = dict(zip(verdicts.batch_id, verdicts.verdict))
    assert by_batch[rotated.name] == "drift", verdicts
    assert by_batch[calm.name] != "drift", verdicts
    assert json.loads(verdicts.thresholds.iloc[0])["alpha"] == 0.01
    history = pipeline.sql("SELECT * FROM monitoring.drift_history WHERE batch_id = ?", [rotated.name])
    assert {"features", "embeddings", "labels", "predictions", "schema"} <= set(history.section)
    assert (~history.crossed.fillna(False)).any(), "values that crossed no threshold are stored too"
    assert (pipeline.data / "reports" / f"drift_partner_api_{rotated.name}.html").read_text().startswith("<!")

    scores = pipeline.sql("SELECT * FROM scoring.predictions WHERE batch_id = ?", [rotated.name])
    accepted = pipeline.sql("SELECT count(*) AS n FROM clean.images WHERE batch_id = ?", [rotated.name]).n.item()
    assert len(scores) == accepted > 100
    assert set(scores.routing) <= {"auto_accept", "human_review"}
    summary = pipeline.sql("SELECT * FROM scoring.batch_summary WHERE batch_id = ?", [rotated.name]).iloc[0]
    assert summary.review_queue == (scores.routing == "human_review").sum()

    trigger = retraining_trigger(
        build_sensor_context(
            instance=pipeline.instance, resources={**resources, "retrain_policy": RetrainPolicy(new_data_share=0.99)}
        )
    )
    assert not isinstance(trigger, SkipReason) and len(trigger.run_requests) == 1
    assert rotated.name in trigger.run_requests[0].tags["dc/retrain_reason"]

    # A new champion (here: the old weights nudged, registered and promoted by hand). A report made again for
    # the rotated batch keeps the model it was judged against, unless asked for today's champion.
    from dagster import materialize

    from dc_pipeline.catalog import drift_key
    from dc_pipeline.core.ml.registry import Registry
    from dc_pipeline.warehouse.connect import connect

    old = pipeline.sql("SELECT version_id FROM registry.aliases WHERE alias = 'champion'").version_id.item()
    with connect(pipeline.data / "warehouse.duckdb", pipeline.data) as conn:
        registry = Registry(conn, pipeline.data / "artifacts")
        record, state = registry.load_weights(old)
        nudged = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state.items()}
        code = {"commit": record["code_commit"], "dirty": False, "label": "test"}
        new, _ = registry.register(
            "augmix", nudged, dataset_hash=record["dataset_hash"], code=code, config={}, seed=0,
            model_spec=record["model_spec"], run_id=None,
        )  # fmt: skip
        registry.set_alias("champion", new, "a test's new champion")
    drift = pipeline.defs.get_assets_def(drift_key("partner_api"))
    op = drift.node_def.name
    for reference, expected in (("previous", old), ("champion", new)):
        again = materialize(
            [drift],
            partition_key=rotated.name,
            instance=pipeline.instance,
            resources=resources,
            run_config={"ops": {op: {"config": {"reference": reference}}}},
        )
        assert again.success
        meta = again.asset_materializations_for_node(op)[0].metadata
        verdict = pipeline.sql("SELECT model_version FROM monitoring.drift_verdicts WHERE batch_id = ?", [rotated.name])
        assert verdict.model_version.item() == meta["model_version"].value == expected, reference
        kept = f"model {old}, kept from this batch's existing report" in meta["reference"].value
        assert kept == (reference == "previous"), meta["reference"].value


def test_new_data_share_triggers_retraining(pipeline):
    pipeline.ingest("field_app", "batch-0001")
    pipeline.ingest("field_app", "batch-0002")
    assert pipeline.refresh().success
    resources = {**pipeline.resources, "retrain_policy": RetrainPolicy(new_data_share=0.2)}
    quiet = retraining_trigger(build_sensor_context(instance=pipeline.instance, resources=resources))
    assert quiet.skip_reason is not None
    for source in ("partner_api", "legacy_erp"):
        for batch in sorted(p.name for p in (pipeline.landing / source).iterdir()):
            pipeline.ingest(source, batch)
    assert pipeline.refresh_data().success
    fired = retraining_trigger(build_sensor_context(instance=pipeline.instance, resources=resources))
    [request] = fired.run_requests
    assert "are new" in request.tags["dc/retrain_reason"]
