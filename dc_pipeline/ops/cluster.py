"""A local cluster on loopback: the multi-machine mode's parts, each a real server, on one machine.

PostgreSQL (the Dagster instance and the shared warehouse), Redis (the Celery broker), an S3 API server
(``moto_server``: compute logs, step outputs, dataset versions, model artifacts), two Celery workers (one on
the default queue, one on the accelerator queue), the Dagster daemon and the webserver. Everything listens
on 127.0.0.1 only; ports and the folder are arguments. ``up`` writes ``cluster.env`` (the variables every
process of the cluster runs with) and the instance's ``dagster.yaml``; ``down`` stops what ``up`` started,
from the pid files, also after a failed ``up``. A real cluster runs the same parts on their own machines:
the configuration is the endpoints in ``cluster.env`` (see ``deploy/``).

PostgreSQL roles: the pipeline's processes log in as ``dc_pipeline_writer``, which owns the ``dagster`` and
``warehouse`` databases and everything in them; readers (the API, the scoring service) as
``dc_pipeline_reader``, which may only SELECT in ``warehouse``. Both need a password over TCP (generated once,
kept in ``pg-passwords.json``, mode 0600); the superuser ``postgres`` is reachable only over the Unix socket in
the data folder, for ``up``'s own administration. ``up`` sets this up on every start, so a cluster folder made
by an older version (everything owned by ``postgres``, trust authentication) is upgraded in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dc_pipeline.core.atomic import process_alive
from dc_pipeline.ops.loopback import HOST, free_ports, wait_for_location, wait_for_port

BUCKET = "dc-pipeline"
DATABASES = ("dagster", "warehouse")
WRITER = "dc_pipeline_writer"
READER = "dc_pipeline_reader"
ROLES_SQL = Path(__file__).with_name("postgres_roles.sql")
"""Creates both roles and hands a database made before them to the writer (also run by deploy/postgres-init.sh)."""


@dataclass(frozen=True)
class Worker:
    name: str
    queues: tuple[str, ...]


@dataclass
class LocalCluster:
    """Where the cluster keeps its state (``folder``) and which loopback ports it uses."""

    folder: Path
    data_dir: Path
    pg_port: int = 5433
    redis_port: int = 6380
    s3_port: int = 9100
    ui_port: int = 3001
    viewer_port: int = 3002  # the viewers' UI: dagster-webserver --read-only
    accelerator_queue: str = "gpu"
    free_slots_after_run_end_seconds: int = 60
    max_concurrent_runs: int = 4
    workers: tuple[Worker, ...] = field(default=())

    def __post_init__(self):
        self.folder, self.data_dir = Path(self.folder).resolve(), Path(self.data_dir).resolve()
        if not self.workers:
            self.workers = (Worker("worker-1", ("dagster",)), Worker("worker-2", (self.accelerator_queue,)))

    @classmethod
    def on_free_ports(cls, folder: Path, **settings) -> LocalCluster:
        """A cluster in ``folder`` (data in ``folder/data``) on loopback ports that are free now."""
        names = ("pg_port", "redis_port", "s3_port", "ui_port", "viewer_port")
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        return cls(folder=folder, data_dir=Path(folder) / "data", **ports, **settings)

    # -- layout ----------------------------------------------------------------------------------------
    @property
    def dagster_home(self) -> Path:
        return self.folder / "dagster_home"

    @property
    def pg_dir(self) -> Path:
        return self.folder / "postgres"

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    @property
    def pids(self) -> Path:
        return self.folder / "pids"

    @property
    def env_file(self) -> Path:
        return self.folder / "cluster.env"

    @property
    def celery_yaml(self) -> Path:
        return self.folder / "celery.yaml"

    @property
    def passwords_file(self) -> Path:
        return self.folder / "pg-passwords.json"

    def passwords(self) -> dict[str, str]:
        """The roles' passwords: generated on the first call, then read from ``pg-passwords.json`` (mode 0600)."""
        if not self.passwords_file.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_private(self.passwords_file, json.dumps({r: secrets.token_urlsafe(24) for r in (WRITER, READER)}))
        return json.loads(self.passwords_file.read_text())

    def warehouse_url(self, role: str = WRITER) -> str:
        return f"postgresql://{role}:{self.passwords()[role]}@{HOST}:{self.pg_port}/warehouse"

    def warehouse_read_url(self) -> str:
        return self.warehouse_url(READER)

    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    def broker_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    def backend_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/1"

    def env(self) -> dict[str, str]:
        """The variables of every process in the cluster (also written to ``cluster.env``)."""
        return {
            "DAGSTER_HOME": str(self.dagster_home),
            "DC_DATA_DIR": str(self.data_dir),
            "DC_WAREHOUSE_URL": self.warehouse_url(),
            "DC_WAREHOUSE_READ_URL": self.warehouse_read_url(),
            "DAGSTER_PG_PASSWORD": self.passwords()[WRITER],  # dagster.yaml reads it: {env: DAGSTER_PG_PASSWORD}
            "DC_OBJECT_STORE_URL": f"s3://{BUCKET}/pipeline",
            "DC_S3_ENDPOINT_URL": self.s3_endpoint(),
            "DC_CELERY_BROKER_URL": self.broker_url(),
            "DC_CELERY_BACKEND_URL": self.backend_url(),
            "DC_ACCELERATOR_QUEUE": self.accelerator_queue,
            "AWS_ACCESS_KEY_ID": "dc-pipeline",
            "AWS_SECRET_ACCESS_KEY": "dc-pipeline-local",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "GX_ANALYTICS_ENABLED": "false",
            "TQDM_DISABLE": "1",
        }

    def process_env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {**os.environ, **self.env(), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}

    # -- configuration files -----------------------------------------------------------------------------
    def instance_yaml(self) -> str:
        return f"""# The Dagster instance of the local cluster (written by `dc-pipeline cluster up`).
storage:
  postgres:
    postgres_db:
      username: {WRITER}
      password: {{env: DAGSTER_PG_PASSWORD}}
      hostname: {HOST}
      port: {self.pg_port}
      db_name: dagster
      scheme: postgresql+psycopg2   # SQLAlchemy 2 maps plain postgresql:// to psycopg 3
concurrency:
  runs:
    max_concurrent_runs: {self.max_concurrent_runs}
  pools:
    # Only the steps that rewrite shared warehouse history carry a pool here (warehouse_history): one at a time.
    default_limit: 1
    granularity: op
run_monitoring:
  # A run whose process dies never releases the pool slot its step claimed; the daemon frees the slots of
  # every run that ended this long ago.
  enabled: true
  free_slots_after_run_end_seconds: {self.free_slots_after_run_end_seconds}
  poll_interval_seconds: 5
compute_logs:
  module: dagster_aws.s3.compute_log_manager
  class: S3ComputeLogManager
  config:
    bucket: {BUCKET}
    prefix: compute-logs
    endpoint_url: {self.s3_endpoint()}
    use_ssl: false
    local_dir: {self.folder / "compute_logs"}
    upload_interval: 5
telemetry:
  enabled: false
"""

    def worker_yaml(self) -> str:
        return f"""# Celery workers' settings: the executor's config block, nested under execution: config:
# (keys at the top level are ignored and the worker falls back to amqp on port 5672).
execution:
  config:
    broker: {self.broker_url()}
    backend: {self.backend_url()}
    config_source:
      worker_prefetch_multiplier: 1
"""

    def write_config(self) -> None:
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        (self.dagster_home / "dagster.yaml").write_text(self.instance_yaml())
        self.celery_yaml.write_text(self.worker_yaml())
        _write_private(self.env_file, "".join(f"{k}={v}\n" for k, v in self.env().items()))  # it has passwords

    # -- processes -----------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd or self.folder,
                env=self.process_env(),
                start_new_session=True,  # its own process group: `down` stops its children too
            )
        (self.pids / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def _bin(self, name: str) -> str:
        local = Path(sys.executable).parent / name
        return str(local) if local.exists() else name

    def pg_hba(self) -> str:
        return f"""# Written by `dc-pipeline cluster up` on every start.
# Administration: the superuser over the Unix socket in the data folder, which only its OS user and root reach.
local all postgres trust
# The pipeline and the readers: TCP on loopback with a password; never the superuser.
host all postgres {HOST}/32 reject
host {",".join(DATABASES)} {WRITER} {HOST}/32 scram-sha-256
host warehouse {READER} {HOST}/32 scram-sha-256
"""

    def start_postgres(self) -> None:
        pg_bin = postgres_bin()
        as_postgres = _as_postgres()
        if as_postgres and subprocess.run([*as_postgres, "test", "-x", str(self.folder)], check=False).returncode:
            raise RuntimeError(
                f"PostgreSQL runs as the postgres user, which cannot enter {self.folder}: choose a cluster folder "
                "it can reach (the default is /tmp/dc-pipeline-cluster)"
            )
        if not (self.pg_dir / "PG_VERSION").is_file():
            self.pg_dir.mkdir(parents=True, exist_ok=True)
            if as_postgres:  # initdb refuses to run as root
                shutil.chown(self.pg_dir, "postgres")
            _run([*as_postgres, f"{pg_bin}/initdb", "-D", str(self.pg_dir), "-A", "trust", "-U", "postgres"])
        (self.pg_dir / "pg_hba.conf").write_text(self.pg_hba())  # keeps initdb's owner and mode
        options = f"-p {self.pg_port} -k {self.pg_dir} -c listen_addresses={HOST}"
        _run(
            [*as_postgres, f"{pg_bin}/pg_ctl", "-D", str(self.pg_dir), "-o", options]
            + ["-l", str(self.pg_dir / "server.log"), "-w", "start"]
        )
        self.setup_roles()

    def setup_roles(self) -> None:
        """The writer and reader roles, the databases, their owner and the reader's grants (``postgres_roles.sql``,
        idempotent), as the superuser over the Unix socket; the passwords go in on stdin, never in argv, and are
        blanked out of any error."""
        passwords = self.passwords()
        script = "".join(
            f"\\set {role.removeprefix('dc_pipeline_')}_password '{pw}'\n" for role, pw in passwords.items()
        )
        script += f"\\i '{ROLES_SQL}'\n"
        psql = [f"{postgres_bin()}/psql", "-X", "-q", "-h", str(self.pg_dir), "-p", str(self.pg_port), "-U", "postgres"]
        try:
            _run([*psql, "-d", "postgres"], input=script)
        except RuntimeError as err:
            message = str(err)
            for pw in passwords.values():
                message = message.replace(pw, "********")
            raise RuntimeError(message) from None

    def stop_postgres(self) -> None:
        if not (self.pg_dir / "postmaster.pid").is_file():
            return
        as_postgres = _as_postgres()
        cmd = [*as_postgres, f"{postgres_bin()}/pg_ctl", "-D", str(self.pg_dir), "-m", "fast", "-w", "stop"]
        subprocess.run(cmd, capture_output=True, check=False)

    def start_object_store(self) -> None:
        pid = self._spawn("s3", [self._bin("moto_server"), "-H", HOST, "-p", str(self.s3_port)])
        wait_for_port(self.s3_port, pid=pid, log_file=self.logs / "s3.log")
        import boto3

        env = self.env()
        s3 = boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint(),
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        )
        if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=BUCKET)

    def start_redis(self) -> None:
        argv = [redis_server(), "--port", str(self.redis_port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        pid = self._spawn("redis", [*argv, "--dir", str(self.folder)])
        wait_for_port(self.redis_port, pid=pid, log_file=self.logs / "redis.log")

    def start_workers(self) -> None:
        for w in self.workers:
            queues = [a for q in w.queues for a in ("-q", q)]
            argv = [self._bin("dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
            argv += ["-y", str(self.celery_yaml), "-n", w.name, *queues, "--", "--concurrency=1"]
            self._spawn(w.name, argv)

    def start_dagster(self) -> None:
        workspace = ["-m", "dc_pipeline.definitions"]
        self._spawn("daemon", [self._bin("dagster-daemon"), "run", *workspace])
        webserver = [self._bin("dagster-webserver"), "-h", HOST]
        operators = self._spawn("webserver", [*webserver, "-p", str(self.ui_port), *workspace])
        viewers = self._spawn("viewer", [*webserver, "-p", str(self.viewer_port), "--read-only", *workspace])
        for name, pid, port in (("webserver", operators, self.ui_port), ("viewer", viewers, self.viewer_port)):
            wait_for_location(f"http://{HOST}:{port}", timeout=240, pid=pid, log_file=self.logs / f"{name}.log")

    def migrate_warehouse(self) -> None:
        """The warehouse's tables, before any worker opens it (migrations are not for two processes at once)."""
        _run([self._bin("dc-pipeline"), "migrate"], env=self.process_env(), cwd=self.folder)

    def migrate_instance(self) -> None:
        """The Dagster instance's tables in PostgreSQL, before the workers, the daemon and the webserver start:
        each creates missing tables when it first opens the instance, and several at once race on PostgreSQL's
        catalogue (``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``)."""
        _run([self._bin("dagster"), "instance", "migrate"], env=self.process_env(), cwd=self.folder)

    def up(self) -> None:
        """Start every part; on a failure, stop what was started and raise."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        try:
            self.start_postgres()
            self.start_redis()
            self.start_object_store()
            self.migrate_warehouse()
            self.migrate_instance()
            self.start_workers()
            self.start_dagster()
        except BaseException:
            self.down()
            raise

    def down(self) -> list[str]:
        """Stop everything ``up`` started: the Dagster processes and workers first, then the servers they use,
        each group at once; returns their names."""
        stopped = []
        dagster = ["webserver", "viewer", "daemon", *[w.name for w in self.workers]]
        for group in (dagster, ["s3", "redis"]):
            pids = {}
            for name in group:
                pid_file = self.pids / f"{name}.pid"
                if pid_file.is_file():
                    pids[name] = int(pid_file.read_text())
            stop_groups(list(pids.values()))
            for name in pids:
                (self.pids / f"{name}.pid").unlink()
            stopped += list(pids)
        self.stop_postgres()
        return [*stopped, "postgres"]

    def running(self) -> dict[str, bool]:
        out = {}
        for pid_file in sorted(self.pids.glob("*.pid")) if self.pids.is_dir() else []:
            out[pid_file.stem] = process_alive(int(pid_file.read_text()))
        out["postgres"] = (self.pg_dir / "postmaster.pid").is_file()
        return out


# -- helpers -----------------------------------------------------------------------------------------------
def _run(
    argv: list[str], capture: bool = False, env: dict | None = None, cwd: Path | None = None, input: str | None = None
) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False, input=input)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout if capture else ""


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by this user only (mode 0600, also when the file was there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _as_postgres() -> list[str]:
    """The prefix that runs PostgreSQL's programs as the postgres user when this process is root (they refuse root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def postgres_bin() -> str:
    """The folder of PostgreSQL's server programs (Debian keeps them under /usr/lib/postgresql/<v>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return str(found[-1].parent)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("PostgreSQL is not installed: `apt-get install postgresql` (see .ci/run)")
    return str(Path(pg_ctl).parent)


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed: `apt-get install redis-server` (see .ci/run)")
    return found


def stop_groups(pids: list[int], timeout: float = 15.0) -> None:
    """SIGTERM to the process groups the ``pids`` lead, SIGKILL to those left after ``timeout``."""

    def signal_all(sig) -> list[int]:
        alive = []
        for pid in pids:
            with contextlib.suppress(ChildProcessError):  # reap a leader this process started (no zombie)
                os.waitpid(pid, os.WNOHANG)
            try:
                os.killpg(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        return alive

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        pids = signal_all(sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = signal_all(0)
        if not pids:
            return
