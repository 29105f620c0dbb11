"""Every warehouse table: its owner (the one module that writes it), its columns and their types.

A column's ``since`` is the number of the migration that adds it (``dc_pipeline.warehouse.migrations``):
adding a column means declaring it here with the next number and registering that migration. The tests
check that migrating an empty warehouse, or one written by an older release, gives exactly these tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from dc_pipeline.catalog import T, raw_table


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    since: int = 1


@dataclass(frozen=True)
class Table:
    name: str  # schema.table
    owner: str  # the module that writes it
    columns: tuple[Column, ...]
    description: str = ""
    since: int = 1

    @property
    def schema(self) -> str:
        return self.name.split(".")[0]

    def column_names(self, until: int | None = None) -> list[str]:
        return [c.name for c in self.columns if until is None or c.since <= until]

    def create_sql(self, until: int | None = None, json_as_text: bool = False) -> str:
        """``CREATE TABLE``; ``json_as_text``: JSON columns as VARCHAR (on PostgreSQL, where DuckDB's extension
        cannot update a ``json`` column from a parameter; the pipeline reads JSON columns as text anyway)."""
        cols = ", ".join(
            f'"{c.name}" {column_type(c.type, json_as_text)}' for c in self.columns if until is None or c.since <= until
        )
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({cols})"


def column_type(declared: str, json_as_text: bool = False) -> str:
    """A declared column type as created: JSON is VARCHAR when ``json_as_text``."""
    return "VARCHAR" if json_as_text and declared.split()[0].upper() == "JSON" else declared


def _cols(spec: str, since: int = 1) -> tuple[Column, ...]:
    """``"name TYPE, name TYPE"`` -> columns."""
    out = []
    for part in spec.split(","):
        name, type_ = part.split(None, 1)
        out.append(Column(name.strip(), type_.strip(), since))
    return tuple(out)


_PROVENANCE = (
    "manifest_file VARCHAR, manifest_sha256 VARCHAR, contract_version VARCHAR, code_version VARCHAR, "
    "ingested_at TIMESTAMP"
)
RAW_IMAGE_COLUMNS = _cols(
    "source VARCHAR, batch_id VARCHAR, row_number BIGINT, record_id VARCHAR, image_ref VARCHAR, "
    "image_sha256 VARCHAR, image_error VARCHAR, label_raw VARCHAR, captured_raw VARCHAR, "
    "device_id VARCHAR, row_error VARCHAR, raw_record VARCHAR, " + _PROVENANCE
)
RAW_REVIEW_COLUMNS = _cols(
    "source VARCHAR, batch_id VARCHAR, row_number BIGINT, image_sha256 VARCHAR, "
    "decision VARCHAR, label_raw VARCHAR, reviewer VARCHAR, reason VARCHAR, decided_raw VARCHAR, "
    "row_error VARCHAR, raw_record VARCHAR, " + _PROVENANCE
)


def raw_table_spec(source: str, kind: str) -> Table:
    """The raw table of one source: one per contract, so it is created by its owner (the raw asset) on the
    source's first batch rather than by a numbered migration."""
    return Table(
        raw_table(source),
        "dc_pipeline.defs.raw.assets",
        RAW_REVIEW_COLUMNS if kind == "reviews" else RAW_IMAGE_COLUMNS,
        f"Raw records of {source}, values as delivered, with provenance.",
    )


_RAW = "dc_pipeline.defs.raw.assets"
_CLEAN = "dc_pipeline.defs.clean.assets"
_FEATURES = "dc_pipeline.defs.features.assets"
_SERVING = "dc_pipeline.defs.serving.assets"
_REGISTRY = "dc_pipeline.core.ml.registry"

TABLES: tuple[Table, ...] = (
    Table(
        T.SCHEMA_HISTORY,
        _RAW,
        _cols(
            "source VARCHAR, batch_id VARCHAR, manifest_file VARCHAR, manifest_sha256 VARCHAR, record_count BIGINT, "
            "columns VARCHAR, schema_hash VARCHAR, previous_schema_hash VARCHAR, changed_from_previous BOOLEAN, "
            "status VARCHAR, messages VARCHAR, renames VARCHAR, contract_version VARCHAR, observed_at TIMESTAMP"
        ),
        "Every batch's observed schema and verdict.",
    ),
    Table(
        T.BATCH_GATE,
        _RAW,
        _cols(
            "source VARCHAR, batch_id VARCHAR, check_name VARCHAR, passed BOOLEAN, detail VARCHAR, "
            "evaluated_at TIMESTAMP"
        ),
        "The latest verdict of each blocking batch check.",
    ),
    Table(
        T.CLEAN_IMAGES,
        _CLEAN,
        _cols(
            "image_id VARCHAR, sha256 VARCHAR, label BIGINT, source VARCHAR, batch_id VARCHAR, record_id VARCHAR, "
            "row_number BIGINT, captured_at TIMESTAMP, device_id VARCHAR, width BIGINT, height BIGINT, channels BIGINT, mode VARCHAR, "
            "n_copies BIGINT"
        ),
        "Accepted unique images.",
    ),
    Table(
        T.QUARANTINE,
        _CLEAN,
        _cols(
            "source VARCHAR, batch_id VARCHAR, manifest_file VARCHAR, manifest_sha256 VARCHAR, row_number BIGINT, "
            "record_id VARCHAR, image_sha256 VARCHAR, reason VARCHAR, detail VARCHAR"
        ),
        "Rejected records with reasons.",
    ),
    Table(
        T.LINEAGE,
        _CLEAN,
        _cols(
            "sha256 VARCHAR, image_id VARCHAR, role VARCHAR, source VARCHAR, batch_id VARCHAR, manifest_file VARCHAR, "
            "row_number BIGINT, record_id VARCHAR, label BIGINT"
        ),
        "Every accepted record, kept or duplicate.",
    ),
    Table(
        T.REVIEW_DECISIONS,
        _CLEAN,
        _cols(
            "sha256 VARCHAR, decision VARCHAR, new_label BIGINT, reviewer VARCHAR, reason VARCHAR, "
            "decided_at TIMESTAMP, source VARCHAR, batch_id VARCHAR, row_number BIGINT"
        ),
        "Accepted review decisions.",
    ),
    Table(
        T.CANDIDATES,
        _CLEAN,
        _cols(
            "source VARCHAR, batch_id VARCHAR, manifest_file VARCHAR, manifest_sha256 VARCHAR, row_number BIGINT, "
            "record_id VARCHAR, image_sha256 VARCHAR, label BIGINT, captured_at TIMESTAMP, device_id VARCHAR, "
            "width BIGINT, height BIGINT, channels BIGINT, mode VARCHAR",
            since=5,
        ),
        "Every raw image record that passed the per-record checks, before the cross-batch rules (record id "
        "conflicts, label conflicts, duplicates): what incremental cleaning looks up instead of reloading history.",
        since=5,
    ),
    Table(
        T.REVIEW_ROWS,
        _CLEAN,
        _cols(
            "source VARCHAR, batch_id VARCHAR, manifest_file VARCHAR, manifest_sha256 VARCHAR, row_number BIGINT, "
            "image_sha256 VARCHAR, decision VARCHAR, new_label BIGINT, reviewer VARCHAR, reason VARCHAR, "
            "decided_at TIMESTAMP, reason_if_known VARCHAR, detail_if_known VARCHAR",
            since=5,
        ),
        "Every review record that names an image, with the verdict it gets once that image is accepted "
        "(reason_if_known NULL: accepted): a decision may arrive before the image it is about.",
        since=5,
    ),
    Table(
        T.CLEANED_BATCHES,
        _CLEAN,
        _cols(
            "source VARCHAR, batch_id VARCHAR, kind VARCHAR, raw_observed_at TIMESTAMP, gate_evaluated_at TIMESTAMP, "
            "blocked VARCHAR, raw_rows BIGINT, cleaned_at TIMESTAMP, cleaned_run_id VARCHAR, touched_run_id VARCHAR",
            since=5,
        ),
        "Every batch cleaning has taken in: when the raw delivery and the gate verdicts it saw were written, so "
        "a batch is cleaned again exactly when either changes, and the last run that changed any of its rows.",
        since=5,
    ),
    Table(
        T.CLEAN_CHANGES,
        _CLEAN,
        _cols("seq BIGINT, sha256 VARCHAR, run_id VARCHAR, changed_at TIMESTAMP", since=5),
        "The images whose clean rows or review decisions a cleaning run changed, numbered by run (seq): the "
        "features stage reads only the changes after the ones its dataset version already contains.",
        since=5,
    ),
    Table(
        T.DATASET_VERSIONS,
        _FEATURES,
        _cols(
            "dataset_hash VARCHAR, created_at TIMESTAMP, image_size BIGINT, split_salt VARCHAR, val_share DOUBLE, "
            "test_share DOUBLE, n_images BIGINT, n_train BIGINT, n_val BIGINT, n_test BIGINT, class_counts VARCHAR, "
            "upstream_batches VARCHAR, path VARCHAR, code_version VARCHAR, is_current BOOLEAN, relabelled BIGINT, "
            "excluded BIGINT"
        )
        + _cols("status VARCHAR, published_at TIMESTAMP, audit VARCHAR", since=4)
        + _cols(
            "format VARCHAR, lance_version BIGINT, content_sum VARCHAR, parent_hash VARCHAR, clean_seq BIGINT, "
            "added BIGINT, removed BIGINT, changed BIGINT, pruned_at TIMESTAMP",
            since=5,
        )
        + _cols("labelled BIGINT", since=6),
        "Every dataset version: written as 'staged', 'published' (is_current: the one published last) once its "
        "blocking checks passed, or 'rejected' with the audit's reasons; path is relative to the data folder.",
    ),
    Table(
        T.DATASET_MEMBERS,
        _FEATURES,
        _cols("dataset_hash VARCHAR, sha256 VARCHAR"),
        "The images of every npy dataset version of releases before 0.3 (Lance versions hold their own "
        "membership; nothing writes this table now, retention deletes a pruned version's rows).",
    ),
    Table(
        T.DATASET_INDEX,
        _FEATURES,
        _cols(
            "sha256 VARCHAR, image_id VARCHAR, label BIGINT, split VARCHAR, source VARCHAR, batch_id VARCHAR, "
            "position BIGINT"
        )
        + _cols("dataset_hash VARCHAR", since=4),
        "The images of npy dataset versions of releases before 0.3, with their splits (a Lance version's "
        "index comes from its store: ``open_version(...).index()``); not written since 0.3.",
    ),
    Table(
        T.CURATION_LINEAGE,
        _FEATURES,
        _cols(
            "dataset_hash VARCHAR, sha256 VARCHAR, image_id VARCHAR, delivered_label BIGINT, decision VARCHAR, "
            "new_label BIGINT, reviewer VARCHAR, reason VARCHAR, decided_at TIMESTAMP, review_source VARCHAR, "
            "review_batch VARCHAR, review_row BIGINT"
        ),
        "Which decision changed which image, for npy dataset versions of releases before 0.3 (Lance versions "
        "record it in features.dataset_changes); not written since 0.3.",
    ),
    Table(
        T.IMAGE_STATS,
        _FEATURES,
        _cols(
            "sha256 VARCHAR, mean_intensity DOUBLE, contrast DOUBLE, ink_fraction DOUBLE, edge_energy DOUBLE, "
            "sharpness DOUBLE, center_of_mass_x DOUBLE, center_of_mass_y DOUBLE, bbox_width DOUBLE, bbox_height DOUBLE, "
            "image_id VARCHAR, label BIGINT, split VARCHAR, source VARCHAR, batch_id VARCHAR, device_id VARCHAR"
        )
        + _cols("dataset_hash VARCHAR", since=4)
        + _cols("image_size BIGINT", since=5),
        "Per-image statistics, computed once per image and canonical size when its pixels are first written "
        "(rows of releases before 0.3 carry the dataset_hash of the version they described instead).",
    ),
    Table(
        T.PIXEL_ROWS,
        _FEATURES,
        _cols(
            "sha256 VARCHAR, image_size BIGINT, row BIGINT, min DOUBLE, max DOUBLE, nan_count BIGINT, "
            "written_at TIMESTAMP",
            since=5,
        ),
        "Where each image's canonical pixels are in the append-only pixel store of its size, with their "
        "figures when written (the feature audit reads the pixels back and checks them as stored).",
        since=5,
    ),
    Table(
        T.HEAD_MEMBERS,
        _FEATURES,
        _cols(
            "sha256 VARCHAR, image_id VARCHAR, label BIGINT, split VARCHAR, source VARCHAR, batch_id VARCHAR, "
            "row BIGINT, decision VARCHAR, member_addr BIGINT",
            since=5,
        ),
        "The images of the newest dataset version written (the head), what the next version is computed from "
        "(row: in the pixel store; member_addr: the Lance row address in the head's members.lance).",
        since=5,
    ),
    Table(
        T.DATASET_CHANGES,
        _FEATURES,
        _cols(
            "dataset_hash VARCHAR, parent_hash VARCHAR, sha256 VARCHAR, change VARCHAR, label BIGINT, split VARCHAR, "
            "previous_label BIGINT, decision VARCHAR",
            since=5,
        ),
        "What each dataset version changed against its parent: images added, removed or relabelled.",
        since=5,
    ),
    Table(
        T.DATASET_HEAD,
        _FEATURES,
        _cols(
            "dataset_hash VARCHAR, image_size BIGINT, split_salt VARCHAR, val_share DOUBLE, test_share DOUBLE, "
            "store VARCHAR, lance_version BIGINT, clean_seq BIGINT, content_sum VARCHAR, updated_at TIMESTAMP",
            since=5,
        )
        + _cols("split_rule VARCHAR", since=6),
        "One row: the newest dataset version written, its settings, its Lance version and the last clean "
        "change it contains.",
        since=5,
    ),
    Table(
        T.FINGERPRINTS,
        _FEATURES,
        _cols(
            "sha256 VARCHAR, dhash BIGINT, band0 BIGINT, band1 BIGINT, band2 BIGINT, band3 BIGINT, thumb BLOB, "
            "brightness DOUBLE, contrast DOUBLE, sharpness DOUBLE, log_sharpness DOUBLE, entropy DOUBLE, source VARCHAR, "
            "width BIGINT, "
            "height BIGINT, fingerprinted_at TIMESTAMP",
            since=6,
        ),
        "One row per accepted image, labelled or not, written once when the image first reaches the features "
        "stage: its perceptual hash (and the four bands near-duplicates are looked up by), a 16x16 thumbnail "
        "that verifies them, and its quality figures.",
        since=6,
    ),
    Table(
        T.NEAR_DUPLICATES,
        _FEATURES,
        _cols("sha256_a VARCHAR, sha256_b VARCHAR, hamming BIGINT, distance DOUBLE, found_at TIMESTAMP", since=6),
        "Pairs of different images (different sha256) that show the same picture: re-encoded, resized, "
        "slightly noisy or cropped copies.",
        since=6,
    ),
    Table(
        T.NEAR_DUPLICATE_GROUPS,
        _FEATURES,
        _cols("sha256 VARCHAR, anchor VARCHAR", since=6),
        "Each image in a near-duplicate group with the group's anchor (the image of the group that arrived first): "
        "the split is drawn from the anchor, so a group never straddles train, validation and test.",
        since=6,
    ),
    Table(
        T.QUALITY_ISSUES,
        _FEATURES,
        _cols("sha256 VARCHAR, issue VARCHAR, score DOUBLE, detail VARCHAR, found_at TIMESTAMP", since=6),
        "Images too dark, too light, blurry, of low information or of an odd size for their source, judged "
        "against the data's own distribution when the image arrived.",
        since=6,
    ),
    Table(
        T.OUTLIERS,
        _FEATURES,
        _cols("sha256 VARCHAR, score DOUBLE, detail VARCHAR, found_at TIMESTAMP", since=6),
        "Images far from the rest on their quality figures taken together.",
        since=6,
    ),
    Table(
        T.CURRENT_MODELS,
        "dc_pipeline.defs.training.assets",
        _cols("kind VARCHAR, version_id VARCHAR, dataset_hash VARCHAR, dagster_run_id VARCHAR"),
        "The newest model of each kind.",
    ),
    Table(
        T.RETRAINING_ATTEMPTS,
        "dc_pipeline.defs.automation.sensors",
        _cols(
            "attempted_at TIMESTAMP, dataset_hash VARCHAR, attempt BIGINT, run_key VARCHAR, reasons VARCHAR, "
            "figures JSON, dagster_run_id VARCHAR",
            since=3,
        ),
        "Every automatic retraining request: when, on which dataset version, why, and its run (found by run "
        "key once launched); outcomes are read from the run and registry.gate_decisions.",
        since=3,
    ),
    Table(
        T.EVALUATION_METRICS,
        "dc_pipeline.defs.evaluation.assets",
        _cols(
            "version_id VARCHAR, kind VARCHAR, dataset_hash VARCHAR, metric VARCHAR, corruption VARCHAR, "
            "severity BIGINT, value DOUBLE"
        )
        + _cols("low DOUBLE, high DOUBLE, level DOUBLE", since=7),
        "Every model's figures on a dataset version's test data; low and high bound the figure's bootstrap "
        "interval over test images at the confidence level (null for figures without one).",
    ),
    Table(
        T.EVALUATION_OUTCOMES,
        "dc_pipeline.defs.evaluation.assets",
        _cols(
            "version_id VARCHAR, dataset_hash VARCHAR, corruption VARCHAR, severity BIGINT, confidence DOUBLE[], "
            "correct BOOLEAN[], automation BOOLEAN[]",
            since=7,
        ),
        "Every model's per-image results on a dataset version's evaluation images (test, then validation split), "
        "clean (corruption null; its automation column flags the images the automation rate is measured on, the "
        "test split's) and under each corruption and severity: what intervals and the gate's paired comparisons "
        "are computed from.",
        since=7,
    ),
    Table(
        T.AUDIT_EVENTS,
        "dc_pipeline.defs.registry.assets",
        _cols(
            "event_id VARCHAR PRIMARY KEY, occurred_at TIMESTAMP, actor VARCHAR, action VARCHAR, subject VARCHAR, detail VARCHAR, "
            "reason VARCHAR, dagster_run_id VARCHAR, origin VARCHAR, collected_at TIMESTAMP",
            since=9,
        ),
        "The audit trail: who or what launched, re-executed or cancelled a run, moved an alias or changed a label, "
        "and why (origin names the record it was read from: dagster_runs, registry.alias_history, "
        "clean.review_decisions).",
        since=9,
    ),
    Table(
        T.SERVED_PREDICTIONS,
        _SERVING,
        _cols(
            "request_id VARCHAR, received_at TIMESTAMP, caller VARCHAR, arm VARCHAR, answered BOOLEAN, "
            "model_version VARCHAR, predicted_class BIGINT, confidence DOUBLE, routing VARCHAR, threshold DOUBLE, "
            "latency_ms DOUBLE, batch_size BIGINT, image_sha256 VARCHAR, log_file VARCHAR",
            since=8,
        ),
        "Every prediction of the scoring service (one row per request and arm that scored it; answered is false "
        "for a shadow), from its prediction log (received_at in UTC); log_file is the file it came from (relative to "
        "the data folder).",
        since=8,
    ),
    Table(
        T.PREDICTION_LOG_FILES,
        _SERVING,
        _cols(
            "log_file VARCHAR PRIMARY KEY, size_bytes BIGINT, rows_in BIGINT, ingested_at TIMESTAMP, refusal VARCHAR",
            since=8,
        ),
        "The prediction log files looked at, each once: taken into serving.predictions with their row count, or "
        "refused (refusal says why: not a regular file, too large, unreadable, other columns).",
        since=8,
    ),
    Table(
        T.AB_FIGURES,
        _SERVING,
        _cols(
            "reported_at TIMESTAMP, arm VARCHAR, model_version VARCHAR, figure VARCHAR, n BIGINT, value DOUBLE, "
            "low DOUBLE, high DOUBLE, level DOUBLE",
            since=8,
        ),
        "Each A/B report: per arm and model version, the answered predictions whose images have a label by now, "
        "and their figures (error, automation rate, error among auto-accepted) with bootstrap intervals.",
        since=8,
    ),
    Table(
        T.MODELS,
        _REGISTRY,
        _cols(
            "version_id VARCHAR PRIMARY KEY, kind VARCHAR, created_at TIMESTAMP, weights_sha256 VARCHAR, "
            "weights_path VARCHAR, dataset_hash VARCHAR, code_commit VARCHAR, code_dirty BOOLEAN, code_version VARCHAR, "
            "config JSON, seed INTEGER, model_spec JSON, metrics JSON, dagster_run_id VARCHAR"
        ),
        "Registered model versions; weights_path is relative to the data folder.",
    ),
    Table(
        T.ALIASES,
        _REGISTRY,
        _cols("alias VARCHAR PRIMARY KEY, version_id VARCHAR, updated_at TIMESTAMP"),
        "Where each alias points.",
    ),
    Table(
        T.ALIAS_HISTORY,
        _REGISTRY,
        _cols(
            "moved_at TIMESTAMP, alias VARCHAR, from_version VARCHAR, to_version VARCHAR, reason VARCHAR, "
            "dagster_run_id VARCHAR"
        ),
        "Every alias move.",
    ),
    Table(
        T.GATE_DECISIONS,
        _REGISTRY,
        _cols(
            "decided_at TIMESTAMP, challenger VARCHAR, champion VARCHAR, passed BOOLEAN, verdict VARCHAR, inputs JSON, "
            "dagster_run_id VARCHAR"
        )
        + _cols(
            "test_images BIGINT, confidence_level DOUBLE, mce_difference DOUBLE, mce_difference_low DOUBLE, "
            "mce_difference_high DOUBLE",
            since=7,
        ),
        "Every promotion-gate decision: the verdict, the challenger-minus-champion mCE with its paired interval, "
        "and in inputs every figure of both models with intervals and the policy.",
    ),
    Table(
        T.PREDICTIONS,
        "dc_pipeline.defs.scoring.assets",
        _cols(
            "image_id VARCHAR, sha256 VARCHAR, source VARCHAR, batch_id VARCHAR, label BIGINT, predicted_label BIGINT, "
            "confidence DOUBLE, probabilities VARCHAR, model_version VARCHAR, threshold DOUBLE, routing VARCHAR, "
            "scored_at TIMESTAMP"
        ),
        "The champion's prediction for every scored image.",
    ),
    Table(
        T.BATCH_SUMMARY,
        "dc_pipeline.defs.scoring.assets",
        _cols(
            "source VARCHAR, batch_id VARCHAR, model_version VARCHAR, images BIGINT, automation_rate DOUBLE, "
            "review_queue BIGINT, mean_confidence DOUBLE, labelled BIGINT, error DOUBLE, accepted_error DOUBLE, "
            "scored_at TIMESTAMP"
        ),
        "Business and model figures per scored batch.",
    ),
    Table(
        T.DRIFT_HISTORY,
        "dc_pipeline.defs.monitoring.assets",
        _cols(
            "source VARCHAR, batch_id VARCHAR, section VARCHAR, test VARCHAR, feature VARCHAR, statistic VARCHAR, "
            "value DOUBLE, p_value DOUBLE, p_adjusted DOUBLE, threshold DOUBLE, crossed BOOLEAN, detail VARCHAR, "
            "reference_dataset VARCHAR, model_version VARCHAR, reported_at TIMESTAMP"
        ),
        "Every drift statistic.",
    ),
    Table(
        T.DRIFT_VERDICTS,
        "dc_pipeline.defs.monitoring.assets",
        _cols(
            "source VARCHAR, batch_id VARCHAR, verdict VARCHAR, reference VARCHAR, reasons VARCHAR, thresholds VARCHAR, "
            "reference_dataset VARCHAR, model_version VARCHAR, images BIGINT, reported_at TIMESTAMP"
        ),
        "The drift verdict of every batch.",
    ),
    Table(
        T.REVIEW_QUEUE,
        "dc_pipeline.defs.curation.assets",
        _cols(
            "rank BIGINT, image_id VARCHAR, sha256 VARCHAR, given_label BIGINT, suggested_label BIGINT, score DOUBLE, "
            "is_issue BOOLEAN, source VARCHAR, batch_id VARCHAR, split VARCHAR, dataset_hash VARCHAR"
        ),
        "Likely label errors, most suspicious first.",
    ),
    Table(
        T.SLICES,
        "dc_pipeline.defs.curation.assets",
        _cols(
            "dimension VARCHAR, kind VARCHAR, slice VARCHAR, count BIGINT, share DOUBLE, errors BIGINT, error DOUBLE, "
            "error_ci_low DOUBLE, error_ci_high DOUBLE, mean_confidence DOUBLE, wrong_confidence DOUBLE, "
            "p_value DOUBLE, p_adjusted DOUBLE, flagged BOOLEAN, suggestion VARCHAR, model_version VARCHAR, "
            "dataset_hash VARCHAR"
        )
        + _cols("bucket_low DOUBLE, bucket_high DOUBLE", since=6),
        "The champion's error per slice, with flags.",
    ),
    Table(
        T.LABELLING_QUEUE,
        "dc_pipeline.defs.curation.assets",
        _cols(
            "sha256 VARCHAR, image_id VARCHAR, source VARCHAR, batch_id VARCHAR, rank BIGINT, reason VARCHAR, "
            "slice VARCHAR, uncertainty DOUBLE, predicted_label BIGINT, confidence DOUBLE, model_version VARCHAR, "
            "queued_at TIMESTAMP, run_id VARCHAR",
            since=6,
        ),
        "Unlabelled images active learning sent for labelling, with why each was picked; an item is answered "
        "when a `label` (or `exclude`) decision for its image arrives through a reviews source.",
        since=6,
    ),
)

ALERT_TABLES: tuple[Table, ...] = (
    Table(
        T.RUN_FAILURES,
        "dc_pipeline.defs.resources",
        _cols("failed_at TIMESTAMP, run_id VARCHAR, job_name VARCHAR, partition VARCHAR, message VARCHAR")
        + _cols("kind VARCHAR", since=2),
        "Every alert (in the alerts file): a failed run (kind run_failure) or a challenger the promotion gate "
        "refused (kind challenger_refused); failed_at is when it was raised.",
    ),
)

BY_NAME = {t.name: t for t in TABLES + ALERT_TABLES}
