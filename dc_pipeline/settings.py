"""The one settings source: ``DC_*`` variables, read once, exported variables winning over ``.env``.

Every entry point (the Dagster definitions, the resources, ``dc_pipeline.api``, the ``dc-pipeline``
command, the tests) calls :func:`get_settings`. Precedence, highest first: variables exported in the
environment, then the ``.env`` file (``DC_ENV_FILE`` names another one; the default is ``.env`` in the
working directory), then the defaults below. Relative paths in ``.env`` are relative to the folder of the
``.env`` file; exported relative paths are relative to the working directory.

Dagster's own CLI (``dagster dev``) loads a ``.env`` in its working directory *over* exported variables;
``dc-pipeline ui`` (what ``make run`` uses) resolves the settings first and starts ``dagster dev`` from the
Dagster home, where there is no ``.env``, so exported variables win there too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGED_CONTRACTS = Path(__file__).resolve().parent / "contracts"
PATH_FIELDS = ("data_dir", "warehouse", "contracts_dir", "label_ground_truth")


class Settings(BaseSettings):
    """Where the pipeline keeps its data, and the few switches a deployment sets."""

    model_config = SettingsConfigDict(env_prefix="DC_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path("data"),
        description="The data folder: landing zone, objects, datasets, artifacts, reports (DC_DATA_DIR).",
    )
    warehouse: Path | None = Field(
        default=None, description="The DuckDB warehouse file (DC_WAREHOUSE); default <data_dir>/warehouse.duckdb."
    )
    contracts_dir: Path = Field(
        default=PACKAGED_CONTRACTS, description="Folder of source contracts (DC_CONTRACTS_DIR)."
    )
    label_ground_truth: Path | None = Field(
        default=None,
        description="Known label errors, for reporting detection only (DC_LABEL_GROUND_TRUTH); default "
        "<data_dir>/demo/label_flips.csv when the demo wrote it.",
    )
    alert_webhook: str | None = Field(
        default=None, description="URL that failed runs are POSTed to (DC_ALERT_WEBHOOK)."
    )
    decode_workers: int | None = Field(
        default=None,
        ge=1,
        description="Processes that decode a large batch (DC_DECODE_WORKERS); default: the cores this process "
        "may use; 1: decode in the step's own process.",
    )

    warehouse_url: str | None = Field(
        default=None,
        description="A PostgreSQL warehouse instead of the DuckDB file (DC_WAREHOUSE_URL, postgresql://user@host:"
        "port/db): several processes and machines read and write it at once.",
    )
    warehouse_read_url: str | None = Field(
        default=None,
        description="The PostgreSQL warehouse as the processes that only read it open it (DC_WAREHOUSE_READ_URL): "
        "the API, the scoring service, the demo reviewer, reproduce. Give it a role that may only SELECT; "
        "default: DC_WAREHOUSE_URL (or the DuckDB file).",
    )
    object_store_url: str | None = Field(
        default=None,
        description="Where dataset versions and model artifacts live instead of the data folder "
        "(DC_OBJECT_STORE_URL, s3://bucket/prefix). Credentials: the usual AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY and AWS_REGION variables.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="An S3-compatible server instead of AWS (DC_S3_ENDPOINT_URL, e.g. http://127.0.0.1:9000).",
    )
    celery_broker_url: str | None = Field(
        default=None,
        description="Run steps on Celery workers through this broker (DC_CELERY_BROKER_URL, redis://host:port/0); "
        "unset: steps run as processes next to the run.",
    )
    celery_backend_url: str | None = Field(
        default=None, description="Celery result backend (DC_CELERY_BACKEND_URL); default: the broker."
    )
    accelerator_queue: str = Field(
        default="gpu",
        description="Celery queue of the steps that want an accelerator: training, evaluation, scoring "
        "(DC_ACCELERATOR_QUEUE). Start the GPU machines' workers on it.",
    )

    serve_tokens: str | None = Field(
        default=None,
        repr=False,
        description="Who may call the scoring service (DC_SERVE_TOKENS): comma-separated caller=token pairs; "
        "the service refuses to start without one. The caller's name goes into the prediction log.",
    )
    serve_ab_mode: str = Field(
        default="off",
        description="The scoring service's A/B harness (DC_SERVE_AB_MODE): off (the champion answers), split "
        "(the challenger answers DC_SERVE_CHALLENGER_SHARE of the callers) or shadow (the challenger scores too).",
    )
    serve_challenger_share: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Share of callers the challenger answers in split mode."
    )
    serve_max_batch: int = Field(
        default=64, ge=1, description="Most requests scored in one forward pass (DC_SERVE_MAX_BATCH; 1: no batching)."
    )
    serve_max_wait_ms: float = Field(
        default=2.0, ge=0.0, description="How long a request waits for others to join its batch (DC_SERVE_MAX_WAIT_MS)."
    )
    serve_refresh_seconds: float = Field(
        default=5.0,
        gt=0.0,
        description="How often the service checks whether an alias moved (DC_SERVE_REFRESH_SECONDS).",
    )

    serve_records_source: str | None = Field(
        default=None,
        description="The source (contract) single labelled records sent to the scoring service land as "
        "(DC_SERVE_RECORDS_SOURCE); unset: the service takes no records.",
    )
    serve_records_max: int = Field(
        default=100, ge=1, description="Records per micro-batch before it closes (DC_SERVE_RECORDS_MAX)."
    )
    serve_records_seconds: float = Field(
        default=30.0,
        gt=0.0,
        description="Seconds after its first record a micro-batch closes (DC_SERVE_RECORDS_SECONDS).",
    )

    @property
    def serve_token_map(self) -> dict[str, str]:
        """token -> caller name, from ``serve_tokens``."""
        tokens: dict[str, str] = {}
        for pair in (self.serve_tokens or "").split(","):
            if not pair.strip():
                continue
            caller, sep, token = pair.strip().partition("=")
            if not sep or not caller.strip() or len(token.strip()) < 16:
                raise ValueError("DC_SERVE_TOKENS: expected caller=token pairs with tokens of at least 16 characters")
            tokens[token.strip()] = caller.strip()
        return tokens

    @property
    def warehouse_location(self) -> str:
        """What the warehouse resource opens: the PostgreSQL URL, else the DuckDB file."""
        return self.warehouse_url or str(self.warehouse_path)

    @property
    def warehouse_read_location(self) -> str:
        """What the readers open: the read URL, else what the writers open."""
        return self.warehouse_read_url or self.warehouse_location

    @property
    def label_ground_truth_path(self) -> Path | None:
        """The known label errors: the setting, else the demo's list in the data folder when it is there."""
        demo = self.data_dir / "demo" / "label_flips.csv"
        return self.label_ground_truth or (demo if demo.is_file() else None)

    @property
    def shared_warehouse(self) -> bool:
        """Whether processes on several machines share the warehouse (PostgreSQL) instead of one file."""
        return bool(self.warehouse_url)

    @property
    def warehouse_path(self) -> Path:
        return self.warehouse or self.data_dir / "warehouse.duckdb"

    @property
    def alerts_path(self) -> Path:
        return self.data_dir / "alerts.duckdb"

    def with_data_dir(self, data_dir: str | Path) -> Settings:
        """The same settings over another data folder (which brings its own warehouse)."""
        return self.model_copy(update={"data_dir": Path(data_dir).resolve(), "warehouse": None})


def redact_url(value: str) -> str:
    """``value`` with the password of a ``scheme://user:password@host`` URL replaced by ``***``."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://[^/@:]*:)[^/@]*@", r"\1***@", value, flags=re.IGNORECASE)


def env_file_values(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None} if path.is_file() else {}


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = None, cwd: str | Path | None = None
) -> Settings:
    """Resolve the settings from ``environ`` (default: ``os.environ``) and the ``.env`` file."""
    environ = dict(os.environ if environ is None else environ)
    cwd = Path(cwd or os.getcwd())
    path = Path(env_file or environ.get("DC_ENV_FILE") or cwd / ".env")
    path = path if path.is_absolute() else cwd / path
    from_file = env_file_values(path)
    values: dict[str, object] = {}
    for name in Settings.model_fields:
        key = f"DC_{name.upper()}"
        if environ.get(key):
            raw, base = environ[key], cwd
        elif from_file.get(key):
            raw, base = from_file[key], path.parent
        else:
            continue
        values[name] = (base / raw).resolve() if name in PATH_FIELDS else raw
    settings = Settings(**values)
    if "data_dir" not in values:
        settings = settings.model_copy(update={"data_dir": (cwd / settings.data_dir).resolve()})
    return settings


def apply_env_file(env_file: str | Path | None = None) -> None:
    """Put the ``.env`` file's other variables (``GX_ANALYTICS_ENABLED`` ...) into the environment of this
    process without overriding exported ones, as the settings do for ``DC_*``."""
    path = Path(env_file or os.environ.get("DC_ENV_FILE") or ".env")
    for key, value in env_file_values(path).items():
        os.environ.setdefault(key, value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return load_settings()
