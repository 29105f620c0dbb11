"""The dc-pipeline command: demo data and demo batches land where the sensor looks."""

from dc_pipeline.cli import main
from dc_pipeline.core.data.manifests import is_complete


def test_demo_data_then_a_drifted_batch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DC_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no .env here
    assert main(["demo-data"]) == 0
    assert main(["demo-data"]) == 0 and "leaving it as it is" in capsys.readouterr().out
    assert (
        main(
            [
                "demo-batch",
                "--source",
                "legacy_erp",
                "--n",
                "50",
                "--drift",
                "noise",
                "--seed",
                "3",
                "--batch-id",
                "batch-9001",
            ]
        )
        == 0
    )
    batch = tmp_path / "landing" / "legacy_erp" / "batch-9001"
    assert is_complete(batch) and (batch / "manifest.parquet").is_file()
    assert sorted(p.name for p in (tmp_path / "landing").iterdir()) == ["field_app", "legacy_erp", "partner_api"]
