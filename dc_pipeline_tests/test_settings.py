"""One settings source: exported variables win over .env, .env over the defaults, everywhere."""

import subprocess
import sys
from pathlib import Path

from dc_pipeline.settings import PACKAGED_CONTRACTS, load_settings, redact_url

REPO = Path(__file__).resolve().parents[1]


def write_env(folder: Path, **values) -> Path:
    path = folder / ".env"
    path.write_text("# a .env as users write it\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def test_defaults_without_env_or_file(tmp_path):
    s = load_settings(environ={}, cwd=tmp_path)
    assert s.data_dir == tmp_path / "data"
    assert s.warehouse_path == tmp_path / "data" / "warehouse.duckdb"
    assert s.contracts_dir == PACKAGED_CONTRACTS and s.alert_webhook is None and s.label_ground_truth is None


def test_env_file_values_are_relative_to_the_file(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    write_env(project, DC_DATA_DIR="store", DC_ALERT_WEBHOOK="http://127.0.0.1:9/hook")
    s = load_settings(environ={}, cwd=project)
    assert s.data_dir == project / "store" and s.alert_webhook == "http://127.0.0.1:9/hook"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    s = load_settings(environ={"DC_ENV_FILE": str(project / ".env")}, cwd=elsewhere)
    assert s.data_dir == project / "store", "DC_ENV_FILE names the file; its paths stay relative to it"


def test_exported_variables_win_over_the_env_file(tmp_path):
    write_env(tmp_path, DC_DATA_DIR="from-file", DC_WAREHOUSE="from-file/w.duckdb", DC_ALERT_WEBHOOK="http://file")
    s = load_settings(
        environ={"DC_DATA_DIR": str(tmp_path / "exported"), "DC_ALERT_WEBHOOK": "http://exported"}, cwd=tmp_path
    )
    assert s.data_dir == tmp_path / "exported"
    assert s.alert_webhook == "http://exported"
    assert s.warehouse_path == tmp_path / "from-file" / "w.duckdb", "what is not exported still comes from .env"


def test_readers_open_the_read_url_else_the_writers_warehouse(tmp_path):
    writer = "postgresql://writer:w-secret@127.0.0.1:5433/warehouse"
    reader = "postgresql://reader:r-secret@127.0.0.1:5433/warehouse"
    assert load_settings(environ={}, cwd=tmp_path).warehouse_read_location == str(
        tmp_path / "data" / "warehouse.duckdb"
    )
    s = load_settings(environ={"DC_WAREHOUSE_URL": writer}, cwd=tmp_path)
    assert s.warehouse_read_url is None and s.warehouse_read_location == writer
    write_env(tmp_path, DC_WAREHOUSE_READ_URL=reader)
    s = load_settings(environ={"DC_WAREHOUSE_URL": writer}, cwd=tmp_path)
    assert s.warehouse_location == writer and s.warehouse_read_location == reader


def test_passwords_in_urls_are_masked():
    assert redact_url("postgresql://reader:r-secret@127.0.0.1:5433/warehouse") == (
        "postgresql://reader:***@127.0.0.1:5433/warehouse"
    )
    assert redact_url("redis://:pw@redis:6379/0") == "redis://:***@redis:6379/0"
    for unchanged in ("postgresql://postgres@127.0.0.1:5433/warehouse", "/data/warehouse.duckdb", "http://h/a:b@c"):
        assert redact_url(unchanged) == unchanged


def test_the_settings_command_prints_no_password(tmp_path):
    env = {
        "DC_WAREHOUSE_URL": "postgresql://writer:w-secret@127.0.0.1:5433/warehouse",
        "DC_WAREHOUSE_READ_URL": "postgresql://reader:r-secret@127.0.0.1:5433/warehouse",
        "DC_SERVE_TOKENS": "app=0123456789abcdef-token",
    }
    out = run_python("from dc_pipeline.cli import main; main(['settings'])", tmp_path, env)
    assert "secret" not in out and "0123456789abcdef" not in out, out
    assert "DC_WAREHOUSE_READ_URL=postgresql://reader:***@127.0.0.1:5433/warehouse" in out.splitlines()
    assert "# warehouse (readers): postgresql://reader:***@127.0.0.1:5433/warehouse" in out.splitlines()


def run_python(code: str, cwd: Path, env: dict) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env={"PATH": "/usr/bin:/bin", **env}
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_every_entry_point_sees_the_same_settings(tmp_path):
    """The CLI, the API and the code location's resources resolve the same folder, exported over .env."""
    write_env(tmp_path, DC_DATA_DIR="from-file")
    env = {"DC_DATA_DIR": str(tmp_path / "exported")}
    cli = run_python("from dc_pipeline.cli import main; main(['settings'])", tmp_path, env)
    api = run_python("from dc_pipeline.api import data_paths; print(data_paths()[0])", tmp_path, env)
    defs = run_python("import dc_pipeline.definitions as d; print(d.defs().resources['lake'].root)", tmp_path, env)
    assert f"DC_DATA_DIR={tmp_path / 'exported'}" in cli.splitlines()
    assert api == defs == str(tmp_path / "exported")
    file_only = run_python("from dc_pipeline.api import data_paths; print(data_paths()[0])", tmp_path, {})
    assert file_only == str(tmp_path / "from-file")


def test_the_ui_command_starts_dagster_where_no_env_file_overrides_exports(tmp_path):
    """``dagster dev`` loads a .env in its working directory over exported variables; ``dc-pipeline ui``
    starts it from the Dagster home with the resolved settings exported."""
    from dc_pipeline import cli

    calls = {}

    def fake_call(cmd, cwd, env):  # records what would be started instead of serving the UI
        calls.update(cmd=cmd, cwd=cwd, env=env)
        return 0

    write_env(tmp_path, DC_DATA_DIR="from-file")
    settings = load_settings(environ={"DC_DATA_DIR": str(tmp_path / "exported")}, cwd=tmp_path)
    original = subprocess.call
    subprocess.call = fake_call
    try:
        args = cli.build_parser(settings).parse_args(["ui", "--port", "3999"])
        assert cli.cmd_ui(args, settings) == 0
    finally:
        subprocess.call = original
    assert calls["env"]["DC_DATA_DIR"] == str(tmp_path / "exported")
    assert not (Path(calls["cwd"]) / ".env").exists()
    assert calls["cmd"][1:4] == ["dev", "-m", "dc_pipeline.definitions"] and "3999" in calls["cmd"]
