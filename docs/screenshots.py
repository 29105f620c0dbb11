"""The README's pictures, taken from a real run: `make run`'s steps in a fresh folder (demo data, materialize with
the launchpad's defaults, a simulated review), then the flagship loop (a rotated batch lands, is ingested,
drift is reported, both models retrain and the gate decides), then the real webserver in headless Chromium.

    .venv/bin/python docs/screenshots.py            # writes docs/screenshots/*.png, prints the gate's verdicts

Needs Debian's chromium (`apt-get install chromium`). Takes a few minutes (real training).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dc_pipeline.catalog import CODE_LOCATION, MODEL_EVALUATION, drift_key
from dc_pipeline.ops import webui
from dc_pipeline.ops.webui import chromium, served_ui

HERE = Path(__file__).resolve().parent
ROTATED_SOURCE = "partner_api"


def dc_pipeline(env: dict, *args: str) -> None:
    print("$ dc-pipeline", *args, flush=True)
    subprocess.run([str(Path(sys.executable).parent / "dc-pipeline"), *args], env=env, check=True)


def gate_decisions(env: dict) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(Path(env["DC_DATA_DIR"]) / "warehouse.duckdb"), read_only=True) as conn:
        return conn.execute(
            "SELECT challenger, passed, verdict FROM registry.gate_decisions ORDER BY decided_at"
        ).fetchall()


def build(root: Path) -> dict:
    """`make run`'s steps, then a rotated batch and `materialize` again (as the sensors would do)."""
    data = root / "data"
    home = data / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DC_DATA_DIR": str(data), "DAGSTER_HOME": str(home), "GX_ANALYTICS_ENABLED": "false"}
    dc_pipeline(env, "demo-data")
    dc_pipeline(env, "materialize")
    dc_pipeline(env, "simulate-review", "--top", "20", "--unless-reviewed")
    dc_pipeline(env, "materialize")
    dc_pipeline(
        env, "demo-batch", "--source", ROTATED_SOURCE, "--n", "200", "--drift", "rotate", "--seed", "1",
        "--batch-id", "rotated-0001",
    )  # fmt: skip
    dc_pipeline(env, "materialize")
    for challenger, passed, verdict in gate_decisions(env):
        print(f"gate: {challenger}: {'promoted' if passed else 'refused'}: {verdict}")
    return env


def open_markdown(page, key: str) -> None:
    """Open the ``[Show Markdown]`` dialog of the metadata entry ``key`` on an asset page."""
    row = page.locator("tr").filter(has=page.get_by_text(key, exact=True)).first
    row.get_by_text("[Show Markdown]").click()
    page.get_by_role("dialog").locator("img").first.wait_for(timeout=30_000)
    page.wait_for_timeout(500)


def close_dialog(page) -> None:
    page.keyboard.press("Escape")
    page.get_by_role("dialog").first.wait_for(state="hidden", timeout=10_000)


def shoot(env: dict, out: Path, log_file: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    home = Path(env["DAGSTER_HOME"])
    with served_ui(home, {"DC_DATA_DIR": env["DC_DATA_DIR"]}, log_file) as url, chromium((1400, 860)) as page:

        def visit(path: str) -> None:
            webui.visit(page, url + path)
            page.wait_for_timeout(1500)

        visit("/asset-groups")
        page.get_by_text("Hide navigation").first.click()
        page.locator("input[placeholder^='Jump to']").locator("xpath=following::button[1]").click()  # group list
        visit("/asset-groups")  # laid out again, to fit the wider view
        page.screenshot(path=out / "asset-graph.png")
        visit("/assets/features/dataset_version?view=lineage&lineageScope=neighbors")
        page.screenshot(path=out / "asset-lineage.png")
        visit("/overview/activity/timeline")
        page.screenshot(path=out / "runs-overview.png")
        visit("/assets/" + drift_key(ROTATED_SOURCE).to_user_string() + "?partition=rotated-0001")
        page.screenshot(path=out / "drift-report-metadata.png")
        open_markdown(page, "plot: most drifted image features")
        page.get_by_role("dialog").screenshot(path=out / "drift-report-plot.png")
        visit("/assets/" + MODEL_EVALUATION.to_user_string())
        open_markdown(page, "plot: error by corruption")
        page.get_by_role("dialog").screenshot(path=out / "evaluation-error-by-corruption.png")
        close_dialog(page)
        open_markdown(page, "plot: reliability")
        page.get_by_role("dialog").screenshot(path=out / "evaluation-reliability.png")
        visit(f"/locations/{CODE_LOCATION}/jobs/retrain/playground")
        page.screenshot(path=out / "retrain-launchpad.png")
    print(f"wrote {sorted(p.name for p in out.glob('*.png'))} under {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where the run's data goes (default: a new temporary folder)")
    parser.add_argument("--out", type=Path, default=HERE / "screenshots")
    parser.add_argument("--reuse", action="store_true", help="skip the run: shoot the UI over --workdir as it is")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="dc-pipeline-screenshots-"))
    if args.reuse:
        data = root / "data"
        env = {**os.environ, "DC_DATA_DIR": str(data), "DAGSTER_HOME": str(data / "dagster_home")}
    else:
        env = build(root)
    shoot(env, args.out, root / "webserver.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
