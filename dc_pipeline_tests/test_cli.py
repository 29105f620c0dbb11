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
    assert sorted(p.name for p in (tmp_path / "landing").iterdir()) == [
        "field_app",
        "legacy_erp",
        "partner_api",
        "production",
    ]


def test_an_unlabelled_demo_batch_keeps_its_digits_aside(tmp_path, monkeypatch, capsys):
    import pandas as pd

    monkeypatch.setenv("DC_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["demo-batch", "--unlabelled", "--n", "30", "--seed", "5", "--batch-id", "p1"]) == 0
    batch = tmp_path / "landing" / "production" / "p1"
    assert is_complete(batch) and "30 unlabelled images" in capsys.readouterr().out
    manifest = pd.read_csv(batch / "manifest.csv")
    assert list(manifest.columns) == ["frame_id", "file", "captured_at", "camera_id"]  # no label column
    truth = pd.read_csv(tmp_path / "demo" / "unlabelled_truth.csv", dtype={"record_id": str})
    assert (
        sorted(truth["record_id"]) == sorted(manifest["frame_id"].astype(str))
        and truth["true_label"].between(0, 9).all()
    )
    assert main(["demo-batch", "--unlabelled", "--source", "field_app"]) == 2
    assert main(["demo-batch"]) == 2
    assert main(["simulate-labelling"]) == 0 and "nothing to answer" in capsys.readouterr().out
