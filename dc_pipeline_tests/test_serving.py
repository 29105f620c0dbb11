"""The scoring service end to end: real HTTP on 127.0.0.1, a real registry in a DuckDB warehouse, real weights."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dc_pipeline.api import load_model
from dc_pipeline.core.ml.registry import Registry
from dc_pipeline.core.ml.training import build_model
from dc_pipeline.core.serving.ab import ABPolicy
from dc_pipeline.core.serving.prediction_log import PredictionLog
from dc_pipeline.core.serving.requests import BadRequest, RequestLimits, decode_request
from dc_pipeline.ops.loopback import free_port
from dc_pipeline.serving.app import PREDICTIONS_FOLDER, ServiceConfig, create_app, registry_follower
from dc_pipeline.settings import Settings
from dc_pipeline.warehouse.connect import connect

TOKEN = "t" * 24
SPEC = {"in_channels": 1, "n_classes": 10, "width": 4, "depth": 2, "input_size": 28, "classes": list(range(10))}


def register(data: Path, seed: int, alias: str | None, threshold: float = 0.5, dataset_hash: str = "d" * 64) -> str:
    torch.manual_seed(seed)
    network = build_model({k: SPEC[k] for k in ("in_channels", "n_classes", "width", "depth", "input_size")})
    with connect(data / "warehouse.duckdb", data) as conn:
        registry = Registry(conn, data / "artifacts")
        version, _ = registry.register(
            "augmix",
            network.state_dict(),
            dataset_hash=dataset_hash,
            code={"commit": "abc", "dirty": False, "label": "abc"},
            config={},
            seed=seed,
            model_spec=SPEC,
            run_id=None,
        )
        registry.set_metrics(version, {"automation_threshold": threshold})
        if alias:
            registry.set_alias(alias, version, "test")
    return version


class Service:
    """The app under uvicorn in a thread, on a free port."""

    def __init__(
        self, data: Path, ab: ABPolicy, max_batch: int = 64, max_wait_seconds: float = 0.005, records=None
    ) -> None:
        import uvicorn

        settings = Settings(data_dir=data)
        self.data = data
        self.log = PredictionLog(data.joinpath(*PREDICTIONS_FOLDER), flush_rows=10_000, flush_seconds=3600)
        config = ServiceConfig(
            tokens={TOKEN: "tester"}, ab=ab, max_batch=max_batch, max_wait_seconds=max_wait_seconds, refresh_seconds=0.2
        )
        self.app = create_app(config, registry_follower(settings), self.log, records, tuple(range(10)))
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Service:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the service did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def call(self, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=body,
            headers=headers or {},
            method="GET" if body is None else "POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def predict(self, body: bytes, content_type: str = "image/png", token: str = TOKEN, key: str | None = None):
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {token}"}
        if key:
            headers["X-Caller-Key"] = key
        return self.call("/v1/predict", body, headers)

    def predictions(self) -> pd.DataFrame:
        self.log.flush()
        files = sorted(self.data.joinpath(*PREDICTIONS_FOLDER).glob("*.parquet"))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.round(load_digits().images[:40] * 255 / 16).astype(np.uint8)


def test_predictions_are_the_registry_models_and_every_one_is_logged(tmp_path, digits) -> None:
    champion = register(tmp_path, 1, "champion", threshold=0.1)
    with Service(tmp_path, ABPolicy("off")) as service:
        assert service.call("/healthz") == (200, {"status": "ok"})
        status, ready = service.call("/readyz")
        assert status == 200 and ready["serving"] == {"champion": champion}
        expected = load_model(champion, data_dir=tmp_path).predict_proba(digits[:5])
        for i in range(5):
            status, answer = service.predict(png(digits[i]))
            assert status == 200, answer
            assert answer["model_version"] == champion and answer["arm"] == "champion"
            probs = np.array([answer["probabilities"][str(c)] for c in range(10)])
            np.testing.assert_allclose(probs, expected[i], atol=1e-5)
            assert answer["class"] == int(np.argmax(expected[i])) and answer["confidence"] == pytest.approx(probs.max())
            assert answer["routing"] == ("auto_accept" if probs.max() >= 0.1 else "review")
        # a JSON pixel array with the same pixels gives the same answer
        status, by_array = service.predict(json.dumps({"pixels": digits[0].tolist()}).encode(), "application/json")
        assert status == 200 and by_array["probabilities"] == pytest.approx(
            service.predict(png(digits[0]))[1]["probabilities"]
        )
        log = service.predictions()
    assert len(log) == 7 and log["request_id"].is_unique and log["answered"].all()
    assert set(log["model_version"]) == {champion} and (log["caller"] == "tester").all()
    assert log["image_sha256"].iloc[0] == hashlib.sha256(png(digits[0])).hexdigest()


def test_hostile_and_unauthorised_requests_are_refused_cleanly(tmp_path, digits) -> None:
    register(tmp_path, 1, "champion")
    bomb = io.BytesIO()
    Image.new("L", (20_000, 20_000)).save(bomb, format="PNG")  # a few kB that decode to 400 MB
    with Service(tmp_path, ABPolicy("off")) as service:
        assert service.predict(png(digits[0]), token="wrong-token-of-some-length")[0] == 401
        assert service.call("/v1/predict", png(digits[0]), {"Content-Type": "image/png"})[0] == 401
        cases = {
            "not an image": (b"hello, not a png", "image/png", 400),
            "truncated": (png(digits[0])[:40], "image/png", 400),
            "bomb": (bomb.getvalue(), "image/png", 413),
            "unsupported type": (b"abc", "text/plain", 415),
            "ragged array": (b'{"pixels": [[1, 2], [3]]}', "application/json", 400),
            "wrong shape": (
                json.dumps({"pixels": np.zeros((4, 4, 2), int).tolist()}).encode(),
                "application/json",
                400,
            ),
            "out of range": (b'{"pixels": [[1, 2], [3, 256]]}', "application/json", 400),
            "not json": (b"{pixels", "application/json", 400),
            "deep nesting": (b"[" * 100_000, "application/json", 400),
            "empty": (b"", "image/png", 400),
        }
        for name, (body, content_type, expected) in cases.items():
            status, answer = service.predict(body, content_type)
            assert status == expected and answer.get("error"), (name, status, answer)
        # a body declared larger than the limit is refused from its headers, before it is read
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
        conn.putrequest("POST", "/v1/predict")
        for name, value in {"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"}.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(3 * 1024 * 1024))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413 and "at most" in json.loads(response.read())["error"]
        conn.close()
        assert service.predict(png(digits[0]))[0] == 200, "the service still answers"


def test_the_service_follows_the_champion_alias_and_refuses_tampered_weights(tmp_path, digits) -> None:
    first = register(tmp_path, 1, "champion")
    with Service(tmp_path, ABPolicy("off")) as service:
        assert service.predict(png(digits[0]))[1]["model_version"] == first
        second = register(tmp_path, 2, "champion")
        deadline = time.monotonic() + 20
        while service.predict(png(digits[0]))[1]["model_version"] != second:
            assert time.monotonic() < deadline, "the alias move was not followed"
            time.sleep(0.1)
        # a third version whose weights change on disk after registration is never served
        third = register(tmp_path, 3, None)
        with connect(tmp_path / "warehouse.duckdb", tmp_path) as conn:
            path = tmp_path / Registry(conn, tmp_path / "artifacts").get(third)["weights_path"]
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        with connect(tmp_path / "warehouse.duckdb", tmp_path) as conn:
            Registry(conn, tmp_path / "artifacts").set_alias("champion", third, "test")
        deadline = time.monotonic() + 20
        while "changed on disk" not in str(service.call("/readyz")[1]["errors"].get("champion")):
            assert time.monotonic() < deadline, "the refused move was not reported"
            time.sleep(0.1)
        assert service.predict(png(digits[0]))[1]["model_version"] == second


def test_ab_split_is_sticky_per_caller_and_shadow_scores_without_answering(tmp_path, digits) -> None:
    champion = register(tmp_path, 1, "champion")
    challenger = register(tmp_path, 2, "challenger")
    policy = ABPolicy("split", challenger_share=0.5)
    with Service(tmp_path, policy) as service:
        arms = {}
        for k in range(12):
            key = f"caller-{k}"
            answers = {service.predict(png(digits[k]), key=key)[1]["arm"] for _ in range(3)}
            assert len(answers) == 1, "a caller stays on one arm"
            arms[key] = answers.pop()
            assert arms[key] == ("challenger" if policy.bucket(key) < 0.5 else "champion")
        assert set(arms.values()) == {"champion", "challenger"}
    with Service(tmp_path, ABPolicy("shadow")) as service:
        for i in range(4):
            status, answer = service.predict(png(digits[i]), key="anyone")
            assert status == 200 and answer["arm"] == "champion" and answer["model_version"] == champion
        log = service.predictions()
    shadow = log[log["request_id"].isin(log[~log["answered"]]["request_id"])]
    assert len(shadow) == 8 and set(shadow[~shadow["answered"]]["model_version"]) == {challenger}


def test_concurrent_requests_are_batched(tmp_path, digits) -> None:
    register(tmp_path, 1, "champion")
    with Service(tmp_path, ABPolicy("off"), max_batch=16, max_wait_seconds=0.05) as service:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: service.predict(png(digits[i % len(digits)])), range(64)))
        assert all(status == 200 for status, _ in answers)
        log = service.predictions()
    assert len(log) == 64 and log["batch_size"].max() > 1 and log["batch_size"].max() <= 16


def test_decoding_limits_without_a_server() -> None:
    limits = RequestLimits(max_bytes=10_000, max_side=64, max_pixels=64 * 64)
    assert decode_request("image/png", png(np.zeros((8, 9), np.uint8)), limits).shape == (8, 9)
    assert decode_request("image/png", png(np.zeros((8, 9, 3), np.uint8)), limits).shape == (8, 9, 3)
    with pytest.raises(BadRequest) as err:
        decode_request("image/png", png(np.zeros((65, 10), np.uint8)), limits)
    assert err.value.status == 413
    with pytest.raises(ValueError, match="16 characters"):
        _ = Settings(serve_tokens="alice=short").serve_token_map
    assert Settings(serve_tokens=f"alice={TOKEN}, etl={'e' * 20}").serve_token_map == {TOKEN: "alice", "e" * 20: "etl"}


def test_prediction_log_is_taken_in_once_and_the_ab_report_has_intervals(tmp_path, digits) -> None:
    """Service -> log files -> warehouse (real Dagster materializations) -> per-arm figures once labels exist."""
    from dagster import DagsterInstance, materialize
    from sklearn.datasets import load_digits

    from dc_pipeline.catalog import T
    from dc_pipeline.defs.resources import resources_for
    from dc_pipeline.defs.serving.assets import ab_report, prediction_log
    from dc_pipeline.warehouse.io import append_rows

    labels = load_digits().target[:40]
    champion = register(tmp_path, 1, "champion", threshold=0.1)
    challenger = register(tmp_path, 2, "challenger", threshold=0.1)
    with Service(tmp_path, ABPolicy("split", challenger_share=0.5)) as service:
        for i in range(40):
            assert service.predict(png(digits[i]), key=f"caller-{i}")[0] == 200
        service.log.flush()
        for i in range(5):  # a second file, written later
            assert service.predict(png(digits[i]), key=f"caller-{i}")[0] == 200
    folder = tmp_path.joinpath(*PREDICTIONS_FOLDER)
    assert len(list(folder.glob("predictions-*.parquet"))) == 2
    (folder / "predictions-99990101T000000000000Z-1-000001.parquet").write_bytes(b"not parquet")
    (folder / "predictions-99990101T000000000000Z-1-000002.parquet").symlink_to(tmp_path / "warehouse.duckdb")
    # labels arrive: the first 30 images are labelled (as a labelled batch would deliver them)
    with connect(tmp_path / "warehouse.duckdb", tmp_path) as conn:
        rows = [
            {"image_id": f"img-{i}", "sha256": hashlib.sha256(png(digits[i])).hexdigest(), "label": int(labels[i])}
            for i in range(30)
        ]
        append_rows(conn, T.CLEAN_IMAGES, pd.DataFrame(rows))
    instance = DagsterInstance.ephemeral()
    resources = resources_for(tmp_path)
    run_config = {"ops": {"serving__ab_report": {"config": {"bootstrap_resamples": 500}}}}
    result = materialize([prediction_log, ab_report], instance=instance, resources=resources, run_config=run_config)
    assert result.success
    with connect(tmp_path / "warehouse.duckdb", tmp_path) as conn:
        files = conn.execute(f"SELECT log_file, rows_in, refusal FROM {T.PREDICTION_LOG_FILES} ORDER BY log_file").df()
        served = conn.execute(f"SELECT arm, model_version, image_sha256 FROM {T.SERVED_PREDICTIONS}").df()
        figures = conn.execute(f"SELECT * FROM {T.AB_FIGURES}").df()
    assert len(files) == 4 and files["rows_in"].iloc[:2].tolist() == [40, 5] and files["refusal"].iloc[:2].isna().all()
    assert "unreadable" in files["refusal"].iloc[2] and "regular file" in files["refusal"].iloc[3]
    assert len(served) == 45 and set(served["model_version"]) == {champion, challenger}
    labelled = served[served["image_sha256"].isin([r["sha256"] for r in rows])]
    for (arm, version), group in figures.groupby(["arm", "model_version"]):
        assert version == (champion if arm == "champion" else challenger)
        assert set(group["figure"]) == {"error", "automation_rate", "accepted_error"}
        assert (group["n"] == (labelled["arm"] == arm).sum()).all()
        error = group.set_index("figure").loc["error"]
        assert error["low"] <= error["value"] <= error["high"] and error["high"] - error["low"] > 0
    # nothing new: a second run takes no file twice
    again = materialize([prediction_log], instance=instance, resources=resources)
    assert again.success
    meta = again.asset_materializations_for_node("serving__prediction_log")[0].metadata
    assert meta["new_files"].value == 0 and meta["predictions"].value == 45


def test_labelled_records_land_as_micro_batches(tmp_path, digits) -> None:
    from dc_pipeline.core.data.contracts import load_contracts
    from dc_pipeline.core.serving.records import MicroBatchWriter
    from dc_pipeline.settings import PACKAGED_CONTRACTS

    register(tmp_path, 1, "champion")
    contract = load_contracts(PACKAGED_CONTRACTS)["field_app"]
    writer = MicroBatchWriter(tmp_path / "landing", contract, max_records=3, max_seconds=3600)
    with Service(tmp_path, ABPolicy("off"), records=writer) as service:
        answers = [service.call(f"/v1/records?label={i}", png(digits[i]), {"Content-Type": "image/png",
                   "Authorization": f"Bearer {TOKEN}"}) for i in range(4)]  # fmt: skip
        assert [status for status, _ in answers] == [200] * 4
        headers = {"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"}
        assert service.call("/v1/records?label=11", png(digits[0]), headers)[0] == 400
        assert service.call("/v1/records?label=1", b"not a png", headers)[0] == 400
        assert service.call("/v1/records?label=1", b"{}", {**headers, "Content-Type": "application/json"})[0] == 415
        assert service.call("/v1/records?label=1", png(digits[0]), {"Content-Type": "image/png"})[0] == 401
    first, last = answers[0][1]["batch_id"], answers[3][1]["batch_id"]
    assert first != last and (tmp_path / "landing" / "field_app" / first / "_SUCCESS").is_file()
    assert (tmp_path / "landing" / "field_app" / last / "_SUCCESS").is_file(), "closed at shutdown"


def test_a_labelled_record_is_scored_through_the_landing_sensor_and_the_run_queue(tmp_path, monkeypatch, digits):
    """Record to scored with the deployed machinery: the service closes a micro-batch, the landing sensor (the
    sensor daemon's iteration) requests its ingest run, the run queue (the queue daemon's iteration, with the
    project's dagster.yaml and pools) launches it in its own process through a code server, and the run
    takes the records through the contract, cleaning, features and the champion's batch scores."""
    import logging

    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
    from dagster._daemon.sensor import execute_sensor_iteration
    from sklearn.datasets import load_digits

    from dc_pipeline.catalog import LANDING_SENSOR
    from dc_pipeline.core.data.contracts import load_contracts
    from dc_pipeline.core.serving.records import MicroBatchWriter
    from dc_pipeline.settings import PACKAGED_CONTRACTS
    from dc_pipeline.warehouse.queries import published_dataset_hash

    from .conftest import published_day_zero

    data, home = tmp_path / "data", tmp_path / "dagster_home"
    monkeypatch.setenv("DC_TEST_DATA", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    published_day_zero(data, home)
    with connect(data / "warehouse.duckdb", data) as conn:
        dataset_hash = published_dataset_hash(conn)
    champion = register(data, 1, "champion", dataset_hash=dataset_hash)
    writer = MicroBatchWriter(data / "landing", load_contracts(PACKAGED_CONTRACTS)["field_app"], max_records=5)
    labels = [int(v) for v in load_digits().target[:5]]
    records = []
    for i in range(5):
        pixels = digits[i].copy()
        pixels[0, 0] = 200 + i  # new images: day 0 may hold these very digits (cleaning drops duplicates)
        records.append(png(pixels))
    headers = {"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"}
    with Service(data, ABPolicy("off"), records=writer) as service:
        sent = time.monotonic()
        answers = [service.call(f"/v1/records?label={labels[i]}", records[i], headers) for i in range(5)]
    assert [status for status, _ in answers] == [200] * 5
    batch_id = answers[0][1]["batch_id"]
    assert (data / "landing" / "field_app" / batch_id / "_SUCCESS").is_file(), "closed at five records"

    target = ModuleTarget(
        module_name="dc_pipeline_tests.storm_location",
        attribute="defs",
        working_directory=str(Path(__file__).parents[1]),
        location_name="records",
    )
    queue, log = QueuedRunCoordinatorDaemon(interval_seconds=1), logging.getLogger("records")
    finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    with (
        DagsterInstance.from_config(str(home)) as instance,
        create_test_daemon_workspace_context(target, instance) as workspace,
    ):
        deadline = time.monotonic() + 600
        while True:
            list(execute_sensor_iteration(workspace, log, None, None))
            list(queue.run_iteration(workspace))
            runs = instance.get_runs(RunsFilter(tags={"dagster/sensor_name": LANDING_SENSOR}))
            if runs and all(r.status in finished for r in runs):
                break
            assert time.monotonic() < deadline, {r.run_id: r.status for r in runs}
            time.sleep(1)
        errors = [
            e.dagster_event.event_specific_data.error.message
            for r in runs
            for e in instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_FAILURE)
        ]
        assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS], errors
        assert [r.tags.get("dagster/partition") for r in runs] == [batch_id]
    elapsed = time.monotonic() - sent
    with connect(data / "warehouse.duckdb", data, read_only=True) as conn:
        scored = conn.execute(
            "SELECT model_version FROM scoring.predictions WHERE source = 'field_app' AND batch_id = ?", [batch_id]
        ).fetchall()
        clean = conn.execute(
            "SELECT sha256, label FROM clean.images WHERE source = 'field_app' AND batch_id = ?", [batch_id]
        ).fetchall()
    assert [v for (v,) in scored] == [champion] * 5, "every record scored by the champion"
    assert sorted(clean) == sorted((hashlib.sha256(r).hexdigest(), label) for r, label in zip(records, labels))
    print(f"record to scored through the sensor and the run queue: {elapsed:.1f} s")
