"""The augmented-samples asset: preview, recorded config, and the label-preservation check."""

import numpy as np
from dagster import AssetKey

AUGMENTED = AssetKey(["augmentation", "augmented_samples"])


def test_demo_augmented_samples_and_their_check(demo):
    event = demo.instance.get_latest_materialization_event(AUGMENTED)
    md = event.asset_materialization.metadata
    assert md["augmentation_config"].value == {
        "severity": 3,
        "width": 3,
        "depth": -1,
        "alpha": 1.0,
        "all_ops": False,
        "views": 2,
        "seed": 0,
    }
    assert "data:image/png;base64," in md["preview: AugMix views"].value
    samples = np.load(demo.data / md["path"].value)
    assert samples["views"].shape == (256, 2, 28, 28)
    assert not np.allclose(samples["views"][:, 0], samples["originals"]), "the views are augmented"
    check = next(e for e in demo.refresh_result.get_asset_check_evaluations() if e.check_name == "label_preservation")
    assert check.passed
    assert check.metadata["augmented_accuracy"].value >= 0.8 * check.metadata["clean_val_accuracy"].value


def test_a_label_destroying_augmentation_is_blocked(pipeline):
    pipeline.ingest_all()
    assert pipeline.refresh_data().success
    destructive = {
        "ops": {
            "augmentation__augmented_samples": {
                "config": {"severity": 10, "width": 1, "depth": 3, "alpha": 0.1, "all_ops": True}
            }
        }
    }
    result = pipeline.refresh(run_config=destructive, selection=[AUGMENTED])
    assert not result.success
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "label_preservation")
    assert not check.passed
    assert check.metadata["ratio"].value < 0.8
