"""The scoring service: HTTP predictions from the registry's champion (and the challenger, in A/B).

    dc-pipeline serve --host 127.0.0.1 --port 8000        # needs DC_SERVE_TOKENS

Endpoints:

* ``POST /v1/predict`` (``Authorization: Bearer <token>``): the body is one image, either its encoded
  bytes (``Content-Type: image/png``, ``image/jpeg``, ...) or ``application/json`` ``{"pixels": [[...]]}``.
  The answer: predicted class, probabilities per class, confidence, routing (``auto_accept`` at or above
  the model's automation threshold, else ``review``), the model version and arm that answered, and a
  request id. ``X-Caller-Key`` keeps a caller on one A/B arm (default: the token's caller name).
* ``GET /healthz`` (the process is up) and ``GET /readyz`` (a champion is loaded; 503 otherwise), open.

Models follow the aliases (checked every ``DC_SERVE_REFRESH_SECONDS``), are loaded only with weights whose
sha256 matches the registry, and keep serving the loaded version while a move cannot be followed (the
reason is on ``/readyz``). Concurrent requests are batched (``DC_SERVE_MAX_BATCH``, ``DC_SERVE_MAX_WAIT_MS``).
Every prediction goes to the prediction log (``<data>/serving/predictions/*.parquet``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dc_pipeline.core.serving.ab import CHALLENGER, CHAMPION, ABPolicy
from dc_pipeline.core.serving.batching import DynamicBatcher
from dc_pipeline.core.serving.models import AliasFollower
from dc_pipeline.core.serving.prediction_log import PREDICTIONS_FOLDER, PredictionLog
from dc_pipeline.core.serving.records import MicroBatchWriter
from dc_pipeline.core.serving.requests import IMAGE_TYPES, BadRequest, RequestLimits, decode_request
from dc_pipeline.settings import Settings

__all__ = ["PREDICTIONS_FOLDER", "ServiceConfig", "build_app", "create_app", "registry_follower", "serve"]


@dataclass
class ServiceConfig:
    """Everything the service needs besides its models: who may call, the A/B policy, batching, limits."""

    tokens: dict[str, str]  # token -> caller name
    ab: ABPolicy
    max_batch: int = 64
    max_wait_seconds: float = 0.002
    refresh_seconds: float = 5.0
    limits: RequestLimits = RequestLimits()

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceConfig:
        tokens = settings.serve_token_map
        if not tokens:
            raise SystemExit("DC_SERVE_TOKENS is not set: the scoring service does not start without caller tokens")
        return cls(
            tokens=tokens,
            ab=ABPolicy(settings.serve_ab_mode, settings.serve_challenger_share),  # type: ignore[arg-type]
            max_batch=settings.serve_max_batch,
            max_wait_seconds=settings.serve_max_wait_ms / 1000.0,
            refresh_seconds=settings.serve_refresh_seconds,
        )


def registry_follower(settings: Settings) -> AliasFollower:
    """Aliases resolved in the warehouse (read-only, as the readers' role, waiting at most a second for a writer)."""
    from dc_pipeline.api import load_model
    from dc_pipeline.core.ml.registry import ALIASES
    from dc_pipeline.warehouse.connect import read_warehouse

    def resolve(alias: str) -> str | None:
        with read_warehouse(settings.warehouse_read_location, wait_seconds=1.0) as conn:
            row = conn.execute("SELECT version_id FROM registry.aliases WHERE alias = ?", [alias]).fetchone()
        return row[0] if row else None

    def load(version: str):
        return load_model(version, data_dir=settings.data_dir, warehouse=settings.warehouse_read_location)

    return AliasFollower(resolve=resolve, load=load, aliases=tuple(a for a in ALIASES if a in (CHAMPION, CHALLENGER)))


def _image_sha256(content_type: str | None, body: bytes, image: np.ndarray) -> str:
    if (content_type or "").startswith("application/json"):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        body = buf.getvalue()
    return hashlib.sha256(body).hexdigest()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (whatever Content-Length claims)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {declared} bytes: at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    config: ServiceConfig,
    follower: AliasFollower,
    log: PredictionLog,
    records: MicroBatchWriter | None = None,
    classes: tuple[int, ...] = (),
) -> FastAPI:
    """The service over ``follower``'s models; ``log`` receives every prediction; ``records`` (with the project's
    ``classes``) takes single labelled records into micro-batches."""
    batchers = {
        arm: DynamicBatcher(_scorer(follower, arm), config.max_batch, config.max_wait_seconds)
        for arm in (CHAMPION, CHALLENGER)
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(follower.refresh)

        async def follow() -> None:
            while True:
                await asyncio.sleep(config.refresh_seconds)
                await asyncio.to_thread(follower.refresh)
                await asyncio.to_thread(log.flush_if_due)

        async def close_due_batches() -> None:
            while records is not None:
                await asyncio.sleep(min(1.0, records.max_seconds / 4))
                await asyncio.to_thread(records.close_if_due)

        if records is not None:
            await asyncio.to_thread(records.recover)
        tasks = [asyncio.create_task(follow()), asyncio.create_task(close_due_batches())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if records is not None:
                await asyncio.to_thread(records.close)
            for batcher in batchers.values():
                await batcher.close()
            await asyncio.to_thread(log.flush)

    app = FastAPI(title="dc-pipeline scoring service", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    def caller_of(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise BadRequest(401, "missing token: send Authorization: Bearer <token>")
        for known, caller in config.tokens.items():
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                return caller
        raise BadRequest(401, "unknown token")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        served = {alias: model.version_id for alias, model in follower.served.items()}
        ready = CHAMPION in follower.served
        body = {"ready": ready, "serving": served, "errors": dict(follower.errors), "ab_mode": config.ab.mode}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.post("/v1/records")
    async def add_record(request: Request, label: int) -> dict[str, Any]:
        """One labelled image into the open micro-batch of ``DC_SERVE_RECORDS_SOURCE``."""
        caller_of(request)
        if records is None:
            raise BadRequest(404, "this service takes no records: DC_SERVE_RECORDS_SOURCE is not set")
        body = await _read_body(request, config.limits.max_bytes)
        content_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if content_type not in IMAGE_TYPES:
            raise BadRequest(415, f"a record is an encoded image ({', '.join(sorted(IMAGE_TYPES))})")
        await asyncio.to_thread(decode_request, content_type, body, config.limits)  # refuse what is not an image
        if classes and label not in classes:
            raise BadRequest(400, f"label {label} is not one of the classes {list(classes)}")
        suffix = "." + content_type.removeprefix("image/").replace("jpeg", "jpg")
        staged = await asyncio.to_thread(records.add, body, suffix, label)
        return {**staged, "source": records.source, "image_sha256": hashlib.sha256(body).hexdigest()}

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, Any]:
        received = time.time()
        started = time.perf_counter()
        caller = caller_of(request)
        body = await _read_body(request, config.limits.max_bytes)
        content_type = request.headers.get("content-type")
        image = await asyncio.to_thread(decode_request, content_type, body, config.limits)
        if CHAMPION not in follower.served:
            raise BadRequest(503, "no champion model is loaded yet")
        key = request.headers.get("x-caller-key") or caller
        answering, scoring = config.ab.arms(key, CHALLENGER in follower.served)
        request_id = str(uuid.uuid4())
        results = await asyncio.gather(*(batchers[arm].submit(image) for arm in scoring), return_exceptions=True)
        latency_ms = (time.perf_counter() - started) * 1000.0
        sha = _image_sha256(content_type, body, image)
        answer: dict[str, Any] | None = None
        for arm, result in zip(scoring, results, strict=True):
            if isinstance(result, BaseException):
                if arm == answering:
                    raise result
                continue  # a failing shadow never fails the answer
            (served, probs), batch_size = result
            decision = _decision(served, probs)
            log.append(
                {
                    "request_id": request_id,
                    "received_at": _utc(received),
                    "caller": caller,
                    "arm": arm,
                    "answered": arm == answering,
                    "model_version": served.version_id,
                    "predicted_class": decision["class"],
                    "confidence": decision["confidence"],
                    "routing": decision["routing"],
                    "threshold": decision["threshold"],
                    "latency_ms": latency_ms,
                    "batch_size": batch_size,
                    "image_sha256": sha,
                }
            )
            if arm == answering:
                answer = {"request_id": request_id, "arm": arm, "model_version": served.version_id, **decision}
        assert answer is not None
        return answer

    return app


def _scorer(follower: AliasFollower, arm: str):
    def score(images):
        served = follower.served.get(arm)
        if served is None:
            raise RuntimeError(f"no {arm} model is loaded")
        probs = served.score(images)
        return [(served, row) for row in probs]

    return score


def _decision(served, probs: np.ndarray) -> dict[str, Any]:
    classes = served.model.classes
    best = int(np.argmax(probs))
    confidence = float(probs[best])
    threshold = served.threshold
    return {
        "class": int(classes[best]),
        "probabilities": {str(c): float(p) for c, p in zip(classes, probs, strict=True)},
        "confidence": confidence,
        "routing": "auto_accept" if threshold is not None and confidence >= threshold else "review",
        "threshold": threshold,
    }


def _utc(seconds: float):
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def build_app(settings: Settings) -> FastAPI:
    """The service as configured by the settings, over the settings' registry and data folder."""
    from dc_pipeline.core.data.contracts import load_contracts

    log = PredictionLog(settings.data_dir.joinpath(*PREDICTIONS_FOLDER))
    contracts = load_contracts(settings.contracts_dir)
    records = None
    if settings.serve_records_source:
        records = MicroBatchWriter(
            settings.data_dir / "landing",
            contracts[settings.serve_records_source],
            settings.serve_records_max,
            settings.serve_records_seconds,
        )
    follower = registry_follower(settings)
    return create_app(ServiceConfig.from_settings(settings), follower, log, records, tuple(contracts.project.classes))


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(build_app(settings), host=host, port=port, log_level="info")
