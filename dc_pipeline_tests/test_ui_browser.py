"""What a user sees: `make run`'s steps over a fresh data folder, then the real webserver driven by Debian's
Chromium (Playwright): every group in the asset graph, the runs in the Overview, a drift report's plot, and
a `retrain` launched from the launchpad with changed settings. Any GraphQL error or error toast fails."""

import json
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance

from dc_pipeline.catalog import CODE_LOCATION, GROUPS, RETRAIN_JOB, drift_key
from dc_pipeline.cli import main
from dc_pipeline.defs import build_definitions
from dc_pipeline.defs.resources import resources_for
from dc_pipeline.demo.batches import write_demo_batch
from dc_pipeline.ops.loopback import graphql
from dc_pipeline.ops.materialize import materialize_all
from dc_pipeline.ops.review import simulate_review
from dc_pipeline.ops.webui import CHROMIUM, chromium, served_ui, visit

from .conftest import tiny_run_config

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Debian's chromium is not installed")

INSTANCE_YAML = """\
# Runs launched from the UI start at once (no daemon in this test); no telemetry from a test.
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""


class Demo:
    def __init__(self, root: Path):
        self.data, self.home = root / "data", root / "dagster_home"
        self.home.mkdir(parents=True)
        (self.home / "dagster.yaml").write_text(INSTANCE_YAML)
        self.instance = DagsterInstance.from_config(str(self.home))
        self.resources = resources_for(self.data)
        self.defs = build_definitions(self.resources)
        self.env = {"DC_DATA_DIR": str(self.data), "GX_ANALYTICS_ENABLED": "false", "TQDM_DISABLE": "1"}

    def materialize(self) -> bool:
        """`dc-pipeline materialize` (with small training, as the suite does everywhere)."""
        return materialize_all(self.defs, self.instance, self.resources["lake"], refresh_config=tiny_run_config())


@pytest.fixture(scope="module")
def made(tmp_path_factory, monkeypatch_module):
    """A data folder after `make run`'s steps: demo data, materialize, a simulated review, materialize again."""
    root = tmp_path_factory.mktemp("make_run")
    demo = Demo(root)
    monkeypatch_module.setenv("DC_DATA_DIR", str(demo.data))
    monkeypatch_module.chdir(root)  # no .env here
    assert main(["demo-data"]) == 0
    assert demo.materialize()
    simulate_review(demo.data, top=20)
    assert demo.materialize()
    return demo


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def ui(made, tmp_path_factory):
    with served_ui(made.home, made.env, tmp_path_factory.mktemp("logs") / "webserver.log") as url:
        yield url


class Watched:
    """A page whose GraphQL errors (responses with ``errors`` or a ``PythonError``) and error toasts are collected."""

    def __init__(self, page, url: str):
        self.page, self.url, self.problems = page, url, []
        page.on("response", self._on_response)

    def _on_response(self, response) -> None:
        if not response.url.startswith(f"{self.url}/graphql"):
            return
        try:
            body = response.json()
        except Exception:  # noqa: BLE001 (a body the page did not keep: nothing to check)
            return
        text = json.dumps(body)
        if body.get("errors") or '"PythonError"' in text:
            self.problems.append(f"GraphQL error: {text[:500]}")

    def open(self, path: str) -> None:
        visit(self.page, self.url + path)

    def check(self) -> None:
        toasts = self.page.locator("[class*='toast' i]").filter(has_text="rror").all_inner_texts()
        toasts += self.page.locator("[class*='toast' i][class*='danger' i]").all_inner_texts()
        assert not self.problems and not toasts, (self.problems, toasts)


@pytest.fixture
def browse(ui):
    with chromium() as page:
        watched = Watched(page, ui)
        yield watched
        watched.check()


def test_make_run_leaves_no_asset_unmaterialized_and_its_runs_belong_to_the_code_location(made):
    graph = made.defs.resolve_asset_graph()
    never = [
        k.to_user_string() for k in graph.get_all_asset_keys() if not made.instance.get_latest_materialization_event(k)
    ]
    assert never == []
    runs = made.instance.get_runs()
    assert runs and {r.remote_job_origin.location_name for r in runs if r.remote_job_origin} == {CODE_LOCATION}
    assert all(r.remote_job_origin for r in runs)

    def runs_of(step) -> list[tuple[str, str | None]]:
        before = {r.run_id for r in made.instance.get_runs()}
        assert step()
        return sorted(
            (r.job_name, r.tags.get("dagster/partition")) for r in made.instance.get_runs() if r.run_id not in before
        )

    # Again with nothing new: nothing is ingested, retrained or scored.
    assert runs_of(made.materialize) == [("monitoring_sweep", None)]
    # A new image batch: it alone is ingested and, after the refresh, scored again by the new champion.
    write_demo_batch(made.data / "landing", "field_app", 40, "none", seed=3, batch_id="batch-new")
    assert runs_of(made.materialize) == [
        ("ingest_field_app", "batch-new"),
        ("ingest_field_app", "batch-new"),
        ("monitoring_sweep", None),
        ("refresh_downstream", None),
    ]


def test_asset_graph_shows_every_group(browse):
    browse.open("/asset-groups")
    body = browse.page.locator("body")
    for group in GROUPS:
        body.get_by_text(group, exact=True).first.wait_for(timeout=30_000)


def test_overview_lists_the_runs_that_built_everything(browse):
    browse.open("/overview/activity/timeline")
    for job in ("ingest_field_app", "refresh_downstream", "monitoring_sweep"):
        browse.page.get_by_text(job, exact=True).first.wait_for(timeout=30_000)


def test_a_drift_report_shows_its_plot(browse):
    browse.open("/assets/" + drift_key("field_app").to_user_string())
    page = browse.page
    page.get_by_text("Latest materialization").first.wait_for(timeout=30_000)
    links = page.get_by_text("[Show Markdown]")
    shown = []
    for i in range(links.count()):
        links.nth(i).click()
        dialog = page.get_by_role("dialog")
        dialog.wait_for(timeout=10_000)
        images = dialog.locator("img[src^='data:image/png']")
        shown += [
            (images.nth(j).get_attribute("alt"), images.nth(j).evaluate("img => img.naturalWidth"))
            for j in range(images.count())
        ]
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden", timeout=10_000)
    assert shown and all(width > 100 for _, width in shown), shown


def test_retrain_launches_from_the_launchpad_with_changed_settings(browse, made):
    browse.open(f"/locations/{CODE_LOCATION}/jobs/{RETRAIN_JOB}/playground")
    page = browse.page
    editor = page.locator(".CodeMirror").first
    editor.wait_for(timeout=30_000)
    text = editor.evaluate("el => el.CodeMirror.getValue()")
    assert "epochs: 30" in text  # the launchpad shows every training setting with its default
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(text.replace("epochs: 30", "epochs: 1"))
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url("**/runs/**", timeout=60_000)
    run_id = page.url.rstrip("/").split("/runs/")[1].split("?")[0]
    run = made.instance.get_run_by_id(run_id)
    assert run.job_name == RETRAIN_JOB
    assert run.run_config["ops"]["training__augmix_model"]["config"]["epochs"] == 1
    deadline = time.monotonic() + 120
    while made.instance.get_run_by_id(run_id).status.value in ("QUEUED", "NOT_STARTED", "STARTING"):
        assert time.monotonic() < deadline, "the launched run did not start"
        time.sleep(1)
    assert made.instance.get_run_by_id(run_id).status.value in ("STARTED", "SUCCESS")
    page.get_by_text(RETRAIN_JOB).first.wait_for(timeout=30_000)
    mutation = "mutation($id: String!) { terminateRun(runId: $id) { __typename } }"
    graphql(browse.url, mutation, {"id": run_id})  # done with it: its steps need not run to the end here
