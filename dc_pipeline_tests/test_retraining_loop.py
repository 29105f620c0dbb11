"""The retraining loop cannot run away: the real trigger against a real Dagster instance and warehouse,
through real refusals of the promotion gate; then its rules one by one (back-off, daily cap, lost
requests, re-arming) on recorded attempts, and the pure decision logic itself."""

from datetime import datetime, timedelta

import pandas as pd
import pytest
from dagster import DagsterInstance, DagsterRunStatus, build_sensor_context
from dagster._core.test_utils import create_run_for_test

from dc_pipeline.catalog import T
from dc_pipeline.core.data.dataset_store import open_version
from dc_pipeline.core.ml import retraining as rules
from dc_pipeline.core.ml.retraining import Attempt, Evidence, Policy, decide
from dc_pipeline.defs.automation.sensors import RUN_KEY_TAG, retraining_trigger
from dc_pipeline.defs.resources import RetrainPolicy, resources_for
from dc_pipeline.demo.batches import write_demo_batch
from dc_pipeline.warehouse.connect import connect
from dc_pipeline.warehouse.io import append_rows

from .conftest import make_pipeline, tiny_run_config

STRICT_GATE = {"mce_relative_margin": 0.99}  # the challenger would have to beat the champion's mCE by 99%


def tick(instance, resources, cursor=None):
    """One evaluation of the real sensor; returns (request or None, skip message, cursor)."""
    result = retraining_trigger(build_sensor_context(instance=instance, resources=resources, cursor=cursor))
    requests = list(result.run_requests or [])
    assert len(requests) <= 1
    return (
        (requests[0] if requests else None),
        (result.skip_reason.skip_message if result.skip_reason else ""),
        result.cursor,
    )


def launch(pipeline, request, gate: dict):
    """Run the requested retraining as the daemon does: the request's tags and run key on the run."""
    return pipeline.defs.resolve_job_def("retrain").execute_in_process(
        instance=pipeline.instance,
        run_config=tiny_run_config(epochs=2, gate=gate),  # refused whatever it learns: train briefly
        tags={**request.tags, RUN_KEY_TAG: request.run_key, "dagster/sensor_name": "retraining_trigger"},
        raise_on_error=False,
    )


def land(pipeline, source: str, seed: int) -> str:
    """Deliver, ingest and publish a new batch; the new current dataset hash."""
    batch = write_demo_batch(pipeline.landing, source, n=120, drift="none", seed=seed)
    assert pipeline.ingest(source, batch.name).success
    assert pipeline.refresh_data().success
    return pipeline.sql("SELECT dataset_hash FROM features.dataset_versions WHERE is_current").dataset_hash.item()


def test_two_refusals_then_no_request_until_new_data(tmp_path):
    pipeline = make_pipeline(tmp_path)
    for batch in ("batch-0001", "batch-0002"):  # one source is enough for a champion, and faster
        assert pipeline.ingest("field_app", batch).success
    assert pipeline.refresh().success  # a champion
    resources = {**pipeline.resources, "retrain_policy": RetrainPolicy(new_data_share=0.05, backoff_minutes=0)}
    request, skip, cursor = tick(pipeline.instance, resources)
    assert request is None and skip.startswith("nothing new")

    runs = []
    for seed in (1, 2):
        dataset = land(pipeline, "partner_api", seed)
        request, skip, cursor = tick(pipeline.instance, resources, cursor)
        assert request is not None, skip
        assert request.run_key == f"retrain:{dataset}:1" and "are new" in request.tags["dc/retrain_reason"]
        result = launch(pipeline, request, STRICT_GATE)
        runs.append(result.run_id)
        gate = pipeline.sql("SELECT passed FROM registry.gate_decisions WHERE dagster_run_id = ?", [result.run_id])
        assert gate.passed.tolist() == [False], "the strict gate refused the challenger"
        for _ in range(3):  # the daemon keeps ticking: the refusal is remembered, the new data is not new
            request, skip, cursor = tick(pipeline.instance, resources, cursor)
            assert request is None and skip.startswith("nothing new"), skip

    champion_dataset = pipeline.sql(
        "SELECT m.dataset_hash FROM registry.aliases a JOIN registry.models m USING (version_id) "
        "WHERE alias = 'champion'"
    ).dataset_hash.item()
    current = set(open_version(pipeline.data / "datasets", dataset).sha256s())
    champion_share = len(current - set(open_version(pipeline.data / "datasets", champion_dataset).sha256s())) / len(
        current
    )
    assert champion_share > 0.05, "compared with the champion alone, the new-data rule would still fire"
    attempts = pipeline.sql(f"SELECT * FROM {T.RETRAINING_ATTEMPTS} ORDER BY attempted_at")
    assert attempts.dagster_run_id.tolist() == runs, "each attempt found its run by run key"
    assert attempts.attempt.tolist() == [1, 1]
    # a drift verdict reported now is a reason, but the current dataset was already tried: still no request
    with connect(pipeline.data / "warehouse.duckdb", pipeline.data) as conn:
        append_rows(
            conn,
            T.DRIFT_VERDICTS,
            pd.DataFrame(
                [{"source": "partner_api", "batch_id": "x", "verdict": "drift", "reported_at": rules.utcnow()}]
            ),
        )
    request, skip, cursor = tick(pipeline.instance, resources, cursor)
    assert request is None and skip.startswith("same data") and "refused" in skip, skip

    dataset = land(pipeline, "field_app", 3)  # new data: the trigger is armed again
    backing_off = {**resources, "retrain_policy": RetrainPolicy(new_data_share=0.05, backoff_minutes=60)}
    request, skip, cursor = tick(pipeline.instance, backing_off, cursor)
    assert request is None and skip.startswith("back-off") and "2 refused" in skip, skip
    request, skip, cursor = tick(pipeline.instance, resources, cursor)
    assert request is not None and request.run_key == f"retrain:{dataset}:1", skip


# -- the rules through the real sensor, on recorded attempts ------------------------------------------------
DATASET = "d" * 64


class Recorded:
    """A warehouse with a published dataset version and recorded attempts, and a Dagster instance with the
    runs those attempts launched (status and gate verdict as given)."""

    def __init__(self, tmp_path):
        self.data, self.instance = tmp_path, DagsterInstance.ephemeral()
        self.db = tmp_path / "warehouse.duckdb"
        with connect(self.db, tmp_path) as conn:
            append_rows(
                conn,
                T.DATASET_VERSIONS,
                pd.DataFrame([{"dataset_hash": DATASET, "is_current": True, "status": "published"}]),
            )

    def attempt(self, ago: timedelta, dataset: str, status=None, gate: bool | None = None, number: int = 1) -> str:
        key = rules.run_key(dataset, number)
        row = {"attempted_at": rules.utcnow() - ago, "dataset_hash": dataset, "attempt": number, "run_key": key}
        with connect(self.db, self.data) as conn:
            append_rows(conn, T.RETRAINING_ATTEMPTS, pd.DataFrame([row]))
            if status is not None:
                run = create_run_for_test(self.instance, job_name="retrain", status=status, tags={RUN_KEY_TAG: key})
                if gate is not None:
                    append_rows(
                        conn,
                        T.GATE_DECISIONS,
                        pd.DataFrame([{"decided_at": rules.utcnow(), "passed": gate, "dagster_run_id": run.run_id}]),
                    )
        return key

    def drift(self, ago: timedelta) -> None:
        with connect(self.db, self.data) as conn:
            append_rows(
                conn,
                T.DRIFT_VERDICTS,
                pd.DataFrame(
                    [{"source": "s", "batch_id": "b", "verdict": "drift", "reported_at": rules.utcnow() - ago}]
                ),
            )

    def tick(self, **policy):
        resources = {**resources_for(self.data), "retrain_policy": RetrainPolicy(**policy)}
        return tick(self.instance, resources)

    def attempts(self) -> pd.DataFrame:
        with connect(self.db, self.data) as conn:
            return conn.execute(f"SELECT * FROM {T.RETRAINING_ATTEMPTS} ORDER BY attempted_at").df()


def test_the_back_off_doubles_with_consecutive_refusals_and_failures(tmp_path):
    w = Recorded(tmp_path)
    w.attempt(timedelta(hours=5), "a" * 64, DagsterRunStatus.SUCCESS, gate=True)  # promoted: ends the streak
    w.attempt(timedelta(hours=2), "b" * 64, DagsterRunStatus.SUCCESS, gate=False)  # refused (a future gate)
    w.attempt(timedelta(minutes=45), "c" * 64, DagsterRunStatus.FAILURE)  # failed
    w.drift(timedelta(minutes=1))
    # two in a row: 30 minutes doubled is 60, and the last was 45 minutes ago
    request, skip, _ = w.tick(backoff_minutes=30)
    assert request is None and skip.startswith("back-off") and "2 refused or failed" in skip, skip
    request, skip, _ = w.tick(backoff_minutes=20)  # 40 minutes have passed
    assert request is not None and request.run_key == rules.run_key(DATASET, 1), skip
    assert w.attempts().run_key.tolist()[-1] == request.run_key, "recorded before the request left"


def test_a_refusal_recorded_by_a_blocking_gate_counts_as_refused(tmp_path):
    w = Recorded(tmp_path)
    w.attempt(timedelta(minutes=10), "b" * 64, DagsterRunStatus.FAILURE, gate=False)
    w.drift(timedelta(minutes=1))
    request, skip, _ = w.tick(backoff_minutes=15)
    assert request is None and skip.startswith("back-off") and "1 refused" in skip, skip


def test_the_daily_cap_counts_a_rolling_24_hours(tmp_path):
    w = Recorded(tmp_path)
    for hours, dataset in ((25, "a"), (23, "b"), (12, "c"), (1, "e")):
        w.attempt(timedelta(hours=hours), dataset * 64, DagsterRunStatus.SUCCESS, gate=True)
    w.drift(timedelta(minutes=1))
    request, skip, _ = w.tick(max_attempts_per_day=3)
    assert request is None and skip.startswith("daily cap") and "3 automatic" in skip, skip
    request, skip, _ = w.tick(max_attempts_per_day=0)
    assert request is None and skip.startswith("daily cap")
    request, skip, _ = w.tick(max_attempts_per_day=4)
    assert request is not None, skip


def test_the_same_dataset_is_never_retried_unless_rearmed(tmp_path):
    w = Recorded(tmp_path)
    w.attempt(timedelta(hours=3), DATASET, DagsterRunStatus.SUCCESS, gate=True)  # even a promotion
    w.drift(timedelta(minutes=1))
    request, skip, _ = w.tick(backoff_minutes=0)
    assert request is None and skip.startswith("same data") and "promoted" in skip, skip
    later = (rules.utcnow() + timedelta(hours=1)).isoformat()
    request, skip, _ = w.tick(rearm_at=later)  # not passed yet: no effect
    assert request is None and skip.startswith("same data")
    rearm = (rules.utcnow() - timedelta(minutes=30)).isoformat()
    request, skip, _ = w.tick(rearm_at=rearm)
    assert request is not None and request.run_key == rules.run_key(DATASET, 2), skip
    # the re-arm allowed one attempt: the next tick waits for its run, then the same data holds again
    request, skip, _ = w.tick(rearm_at=rearm)
    assert request is None and skip.startswith("waiting for launch")


def test_a_request_lost_before_launch_is_requested_again_under_its_key(tmp_path):
    w = Recorded(tmp_path)
    key = w.attempt(timedelta(minutes=11), DATASET)  # recorded, but no run ever appeared
    request, skip, _ = w.tick()
    assert request is not None and request.run_key == key, skip
    assert len(w.attempts()) == 1, "the same attempt, not a new one"


def test_the_cursor_is_not_the_memory(tmp_path):
    """A lost or reset cursor (a new daemon) decides the same: the attempts are in the warehouse."""
    w = Recorded(tmp_path)
    w.attempt(timedelta(hours=3), DATASET, DagsterRunStatus.FAILURE, gate=False)
    w.drift(timedelta(minutes=1))
    resources = {**resources_for(w.data), "retrain_policy": RetrainPolicy(backoff_minutes=0)}
    for cursor in (None, "2026-11-02T00:00:00", '{"checked_at": "2020-01-01T00:00:00"}'):
        request, skip, _ = tick(w.instance, resources, cursor)
        assert request is None and skip.startswith("same data"), skip


# -- the decision logic ------------------------------------------------------------------------------------
NOW = datetime(2026, 11, 20, 12, 0)


def attempt(minutes_ago: float, dataset: str = "a", number: int = 1) -> Attempt:
    return Attempt(NOW - timedelta(minutes=minutes_ago), dataset, number, rules.run_key(dataset, number))


def outcomes(mapping: dict):
    return lambda a: mapping[a.run_key]


DRIFT = Evidence(drifted=("s/b",))


@pytest.mark.parametrize(
    ("status", "gate", "expected"),
    [
        ("FAILURE", False, rules.REFUSED),  # today: the blocking gate fails the run
        ("SUCCESS", False, rules.REFUSED),  # a gate that records its refusal in a successful run
        ("STARTED", False, rules.REFUSED),
        ("SUCCESS", True, rules.PROMOTED),
        ("FAILURE", True, rules.FAILED),  # promoted by the gate, then the run failed
        ("FAILURE", None, rules.FAILED),
        ("CANCELED", None, rules.FAILED),
        ("SUCCESS", None, rules.SUCCEEDED),
        ("STARTED", None, rules.RUNNING),
        ("QUEUED", True, rules.RUNNING),
    ],
)
def test_outcome_of_a_run(status, gate, expected):
    assert rules.outcome_of(status, gate) == expected


@pytest.mark.parametrize(("streak", "wait_minutes"), [(1, 10), (2, 20), (3, 40), (4, 80), (20, 7 * 24 * 60)])
def test_backoff_doubles_up_to_a_week(streak, wait_minutes):
    attempts = [attempt(1000 + k, dataset=f"d{k}") for k in range(streak)]
    until, counted = rules.backoff_until(
        rules.counted(attempts, Policy(), NOW), Policy(backoff_minutes=10), lambda a: rules.REFUSED
    )
    assert until == NOW - timedelta(minutes=1000) + timedelta(minutes=wait_minutes)
    assert counted <= streak


def test_decide_order_of_rules():
    policy = Policy(backoff_minutes=60, max_attempts_per_day=2)
    refused = attempt(30, "old")
    status = outcomes({refused.run_key: rules.REFUSED})
    assert decide(NOW, policy, None, [], DRIFT, status).rule == rules.NO_DATASET
    assert decide(NOW, policy, "new", [refused], Evidence(), status).rule == rules.NOTHING_NEW
    assert decide(NOW, policy, "old", [refused], DRIFT, status).rule == rules.SAME_DATA
    assert decide(NOW, policy, "new", [refused], DRIFT, status).rule == rules.BACK_OFF
    later = NOW + timedelta(minutes=31)
    go = decide(later, policy, "new", [refused], DRIFT, status)
    assert (go.rule, go.run_key, go.records_attempt) == (rules.REQUEST, "retrain:new:1", True)
    assert go.reasons == ("drift in s/b",)
    two = [attempt(100, "x"), attempt(50, "y")]
    both = outcomes({a.run_key: rules.PROMOTED for a in two})
    assert decide(NOW, policy, "new", two, DRIFT, both).rule == rules.DAILY_CAP


def test_new_data_is_measured_against_the_baseline():
    policy = Policy(new_data_share=0.2)
    assert rules.reasons(Evidence(new_images=19, known_images=100), policy) == []
    assert "are new" in rules.reasons(Evidence(new_images=20, known_images=100), policy)[0]
    assert rules.reasons(Evidence(new_images=500, known_images=0), policy) == [], "nothing trained to compare with"
    last = attempt(30, "tried")
    base = rules.baseline([attempt(90, "older"), last], policy, NOW, "champ", NOW - timedelta(days=2))
    assert base == rules.Baseline(last.attempted_at, ("tried", "champ"))
    newer_champion = rules.baseline([last], policy, NOW, "champ", NOW - timedelta(minutes=5))
    assert newer_champion.since == NOW - timedelta(minutes=5)
    assert rules.baseline([], policy, NOW, None, None) == rules.Baseline(None, ())


def test_rearming_allows_one_more_attempt_on_the_same_data():
    first = attempt(120, "a")
    status = outcomes({first.run_key: rules.REFUSED})
    future = Policy(backoff_minutes=0, rearm_at=NOW + timedelta(minutes=1))
    assert decide(NOW, future, "a", [first], DRIFT, status).rule == rules.SAME_DATA
    passed = Policy(backoff_minutes=0, rearm_at=NOW - timedelta(minutes=60))
    go = decide(NOW, passed, "a", [first], DRIFT, status)
    assert (go.rule, go.run_key) == (rules.REQUEST, "retrain:a:2")
    second = attempt(10, "a", number=2)
    status2 = outcomes({first.run_key: rules.REFUSED, second.run_key: rules.REFUSED})
    assert decide(NOW, passed, "a", [first, second], DRIFT, status2).rule == rules.SAME_DATA


def test_a_lost_request_waits_then_is_requested_again():
    lost = attempt(5, "a")
    status = outcomes({lost.run_key: rules.NOT_LAUNCHED})
    assert decide(NOW, Policy(), "a", [lost], Evidence(), status).rule == rules.WAITING_FOR_LAUNCH
    again = decide(NOW + rules.LAUNCH_GRACE, Policy(), "a", [lost], Evidence(), status)
    assert (again.rule, again.run_key, again.records_attempt) == (rules.REQUEST_AGAIN, lost.run_key, False)


def test_outcomes_are_read_only_when_a_rule_needs_them():
    asked = []

    def status(a):
        asked.append(a.run_key)
        return rules.PROMOTED

    many = [attempt(10_000 - k, f"d{k}") for k in range(50)]  # oldest first
    decide(NOW, Policy(), "new", many, Evidence(), status)
    assert asked == [many[-1].run_key]
