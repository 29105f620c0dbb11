"""The model registry: versions with lineage, weights verified by sha256, aliases with history, the gate.

Tables live in the warehouse schema ``registry`` (declared in ``dc_pipeline.warehouse.tables``); weights in
``<artifacts>/models/<version_id>/``, recorded relative to the data folder (the artifacts folder's parent). A
version id is ``<kind>-<first 12 hex of the weights sha256>``: retraining the same code on the same
dataset with the same config and seed gives the same weights, hence the same version.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from dc_pipeline.core.ml.bootstrap import Comparison, Interval
from dc_pipeline.core.paths import PathOutsideDataFolder, stored_file, to_relative
from dc_pipeline.core.storage import Location, OutsideStorageRoot, as_location

if TYPE_CHECKING:
    from dc_pipeline.core.serving.ab_report import LiveComparison

ALIASES = ("champion", "challenger")


class RegistryError(LookupError):
    """Unknown version or alias, or weights that no longer match the registry."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def serialize_weights(state_dict: dict) -> bytes:
    """safetensors bytes of a state dict (never a pickle)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in sorted(state_dict.items())})


def deserialize_weights(data: bytes) -> dict:
    from safetensors.torch import load

    return load(data)


def _card(record: dict, code: dict) -> bytes:
    """``model.json``: what a version is, readable without the warehouse."""
    keys = ("version_id", "kind", "model_spec", "config", "seed", "dataset_hash")
    card = {**{k: record[k] for k in keys}, "code": code, "weights_sha256": record["weights_sha256"]}
    return json.dumps(card, indent=2, default=str).encode()


def _store(folder: Path | Location, files: dict[str, bytes], replace: bool = True) -> None:
    """Write each file whole (``core.atomic`` locally, one PUT in object storage): a killed writer leaves no
    partial file under the final name. A file that already holds these bytes, or any file when ``replace``
    is false, is kept."""
    from dc_pipeline.core.atomic import remove_abandoned, write_bytes

    if isinstance(folder, Location):
        if folder.is_s3:
            for name, data in files.items():
                target = folder / name
                if not (target.is_file() and (not replace or target.read_bytes() == data)):
                    target.write_bytes(data)
            return
        folder = folder.local_path()
    folder.mkdir(parents=True, exist_ok=True)
    remove_abandoned(folder)
    for name, data in files.items():
        target = folder / name
        if not (target.is_file() and (not replace or target.read_bytes() == data)):
            write_bytes(target, data)


class Registry:
    """Registry operations over an open DuckDB connection and the artifact folder."""

    def __init__(self, conn, artifacts: str | Path):
        self.conn = conn
        self.artifacts = as_location(artifacts)
        self.root = self.artifacts.parent  # the data folder (or object-store root) stored paths are relative to

    def _file(self, stored: str) -> Location:
        """The file a stored path names, inside the root: no absolute path, no ``..`` (a legacy absolute path of
        release 0.1 is mapped by the data folder's layout, on the local disk only)."""
        if self.root.is_s3:
            try:
                return self.root / stored
            except OutsideStorageRoot as exc:
                raise PathOutsideDataFolder(str(exc)) from None
        return as_location(stored_file(stored, self.root.local_path()))

    def _relative(self, path: Location) -> str:
        return (
            path.relative_to(self.root) if self.root.is_s3 else to_relative(path.local_path(), self.root.local_path())
        )

    def ensure(self) -> Registry:
        """The tables exist once the warehouse is migrated; kept so callers read as before."""
        return self

    # -- versions ------------------------------------------------------------------------------
    def register(
        self,
        kind: str,
        state_dict: dict,
        *,
        dataset_hash: str,
        code: dict,
        config: dict,
        seed: int,
        model_spec: dict,
        run_id: str | None,
    ) -> tuple[str, bool]:
        """Store weights and lineage. Returns ``(version_id, created)``; identical weights are one version.

        Files first, each written whole (a temporary file renamed into place), then the row: a killed run
        leaves at most files without a row, never a row without its files. Registering weights whose row
        exists repairs their files when they are missing or changed, instead of trusting the row."""
        data = serialize_weights(state_dict)
        sha = hashlib.sha256(data).hexdigest()
        version_id = f"{kind}-{sha[:12]}"
        existing = self.find(version_id)
        if existing is not None:
            if existing["weights_sha256"] != sha:
                raise RegistryError(
                    f"{version_id} is registered with other weights (sha256 {existing['weights_sha256']})"
                )
            try:
                path = self._file(existing["weights_path"])
            except PathOutsideDataFolder as exc:
                raise RegistryError(f"weights of {version_id}: {exc}") from None
            _store(path.parent, {path.name: data})
            _store(path.parent, {"model.json": _card(existing, existing["code"])}, replace=False)
            return version_id, False
        folder = self.artifacts / "models" / version_id
        path = folder / "weights.safetensors"
        record = {
            "version_id": version_id,
            "kind": kind,
            "model_spec": model_spec,
            "config": config,
            "seed": seed,
            "dataset_hash": dataset_hash,
            "weights_sha256": sha,
        }
        _store(folder, {path.name: data, "model.json": _card(record, code)})
        self.conn.execute(
            "INSERT INTO registry.models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                version_id,
                kind,
                _now(),
                sha,
                self._relative(path),
                dataset_hash,
                code.get("commit"),
                code.get("dirty"),
                code.get("label"),
                json.dumps(config, default=str),
                int(seed),
                json.dumps(model_spec),
                None,
                run_id,
            ],
        )
        return version_id, True

    def find(self, version_id: str) -> dict | None:
        rows = self.conn.execute("SELECT * FROM registry.models WHERE version_id = ?", [version_id]).df()
        if rows.empty:
            return None
        record = rows.iloc[0].to_dict()
        for key in ("config", "model_spec", "metrics"):
            record[key] = json.loads(record[key]) if isinstance(record[key], str) else None
        record["code"] = {
            "commit": record["code_commit"],
            "dirty": record["code_dirty"],
            "label": record["code_version"],
        }
        return record

    def get(self, ref: str) -> dict:
        record = self.find(self.resolve(ref))
        if record is None:
            raise RegistryError(f"model version {ref!r} is not in the registry")
        return record

    def resolve(self, ref: str) -> str:
        """A version id, or the version an alias points to."""
        if ref in ALIASES:
            row = self.conn.execute("SELECT version_id FROM registry.aliases WHERE alias = ?", [ref]).fetchone()
            if row is None:
                raise RegistryError(f"no model has the alias {ref!r} yet")
            return row[0]
        return ref

    def versions(self) -> pd.DataFrame:
        return self.conn.execute("SELECT * FROM registry.models ORDER BY created_at").df()

    def set_metrics(self, version_id: str, metrics: dict) -> None:
        self.conn.execute(
            "UPDATE registry.models SET metrics = ? WHERE version_id = ?",
            [json.dumps(metrics, default=float), version_id],
        )

    def load_weights(self, ref: str) -> tuple[dict, dict]:
        """``(record, state_dict)``; refuses weights whose sha256 differs from the registry's."""
        record = self.get(ref)
        try:
            path = self._file(record["weights_path"])
        except PathOutsideDataFolder as exc:
            raise RegistryError(f"weights of {record['version_id']}: {exc}; refusing to load them") from None
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != record["weights_sha256"]:
            raise RegistryError(
                f"weights of {record['version_id']} were changed on disk: sha256 {actual[:12]} "
                f"!= registered {record['weights_sha256'][:12]}; refusing to load them"
            )
        return record, deserialize_weights(data)

    # -- aliases ---------------------------------------------------------------------------------
    def alias(self, alias: str) -> str | None:
        row = self.conn.execute("SELECT version_id FROM registry.aliases WHERE alias = ?", [alias]).fetchone()
        return row[0] if row else None

    def set_alias(self, alias: str, version_id: str, reason: str, run_id: str | None = None) -> bool:
        """Point ``alias`` at ``version_id`` and record the move; returns False when nothing moved."""
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; one of {ALIASES}")
        if self.find(version_id) is None:
            raise RegistryError(f"model version {version_id!r} is not in the registry")
        from dc_pipeline.warehouse.io import transaction

        with transaction(self.conn):  # the move and its history row, both or neither
            previous = self.alias(alias)
            if previous == version_id:
                return False
            now = _now()
            self.conn.execute("INSERT OR REPLACE INTO registry.aliases VALUES (?, ?, ?)", [alias, version_id, now])
            self.conn.execute(
                "INSERT INTO registry.alias_history VALUES (?, ?, ?, ?, ?, ?)",
                [now, alias, previous, version_id, reason, run_id],
            )
        return True

    def record_gate(self, decision: GateDecision, run_id: str | None) -> None:
        mce = decision.mce_difference
        self.conn.execute(
            "INSERT INTO registry.gate_decisions (decided_at, challenger, champion, passed, verdict, inputs, "
            "dagster_run_id, test_images, confidence_level, mce_difference, mce_difference_low, "
            "mce_difference_high) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                _now(),
                decision.challenger,
                decision.champion,
                decision.passed,
                decision.verdict,
                json.dumps(decision.inputs, default=float),
                run_id,
                decision.inputs.get("test_images"),
                mce.level if mce else None,
                mce.estimate if mce else None,
                mce.low if mce else None,
                mce.high if mce else None,
            ],
        )


# -- the promotion gate --------------------------------------------------------------------------
@dataclass(frozen=True)
class GatePolicy:
    """The gate's rule. Differences are challenger minus champion on the same evaluation images, with paired
    bootstrap intervals at ``confidence_level``; lower is better for all three figures."""

    mce_relative_margin: float = 0.0  # the mCE difference's interval must lie below -margin * champion mCE
    max_clean_error_increase: float = 0.0  # refused if the clean-error difference's interval lies above this
    calibration_tolerance: float = 0.0  # refused if the calibration difference's interval lies above this
    first_max_clean_error: float = 0.10  # absolute bounds for the first model ever promoted
    first_max_mce: float = 0.40
    first_max_rms_calibration: float = 0.25
    confidence_level: float = 0.95
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    use_live_evidence: bool = True  # the scoring service's labelled predictions, when there are enough
    require_live_evidence: bool = False  # a staged roll-out: no promotion before that evidence exists
    live_min_labelled: int = 100  # per model
    live_error_tolerance: float = 0.0  # refused if a live error difference's interval lies above this
    live_automation_tolerance: float = 0.0  # refused if the automation rate difference's lies below -this


@dataclass(frozen=True)
class GateDecision:
    challenger: str
    champion: str | None
    passed: bool
    verdict: str
    inputs: dict[str, Any] = field(default_factory=dict)
    mce_difference: Interval | None = None  # challenger minus champion, when there is a champion


GUARDED = (  # (figure, name in verdicts, policy field with the tolerated increase)
    ("clean_error", "clean error", "max_clean_error_increase"),
    ("rms_calibration_corrupted", "RMS calibration error on corrupted data", "calibration_tolerance"),
)
LIVE_GUARDED = (  # (live figure, name in verdicts, worse when the difference is: +1 higher, -1 lower, tolerance)
    ("error", "live error", 1, "live_error_tolerance"),
    ("accepted_error", "live error among auto-accepted answers", 1, "live_error_tolerance"),
    ("automation_rate", "live automation rate", -1, "live_automation_tolerance"),
)


def live_failures(live: LiveComparison, policy: GatePolicy) -> list[str]:
    """Why the service's evidence holds the challenger back: a live figure worse beyond noise."""
    failures = []
    for key, name, worse, tolerance in LIVE_GUARDED:
        d, allowed = live.difference[key], getattr(policy, tolerance)
        if d.above(allowed) if worse > 0 else d.below(-allowed):
            side = "above" if worse > 0 else "below"
            failures.append(
                f"{name} is worse beyond noise in the scoring service: challenger - champion "
                f"{d.text(signed=True)} ({live.sample}) lies wholly {side} {worse * allowed:+.4f}"
            )
    return failures


def promotion_decision(
    challenger: str,
    champion: str | None,
    evidence: Comparison | dict[str, Interval],
    policy: GatePolicy,
    live: LiveComparison | None = None,
) -> GateDecision:
    """Decide whether ``challenger`` may replace ``champion``.

    With a champion, ``evidence`` is the paired comparison challenger vs champion on the same evaluation images:
    the challenger must be better on mCE beyond noise (the whole interval of the difference below
    ``-mce_relative_margin`` x the champion's mCE) and not worse beyond noise on clean error and on RMS
    calibration error on corrupted data (no interval of a difference wholly above its tolerance). The
    first model ever (``evidence``: its own intervals) must have point estimates within absolute bounds.

    ``live``, the two models on the scoring service's labelled predictions (A/B split or shadow), can only hold
    a challenger back: it is refused when its live error, error among auto-accepted answers or automation rate
    is worse beyond noise. The offline robustness evidence stays necessary. With ``require_live_evidence``
    (a staged roll-out) a challenger that passes offline is held until that evidence exists.
    """
    own = evidence.a if isinstance(evidence, Comparison) else evidence
    broken = [
        k for k in ("clean_error", "mce", "rms_calibration_corrupted") if k in own and math.isnan(own[k].estimate)
    ]
    if broken:
        verdict = f"refused: the challenger's {', '.join(broken)} is not a number (its predictions are not finite)"
        return GateDecision(challenger, champion, False, verdict, {"policy": vars(policy)})
    if champion is None:
        figures = own
        bounds = (
            ("clean error", "clean_error", policy.first_max_clean_error),
            ("mCE", "mce", policy.first_max_mce),
            ("RMS calibration error", "rms_calibration_corrupted", policy.first_max_rms_calibration),
        )
        failures = [f"{n} {figures[k].text()} > {b}" for n, k, b in bounds if figures[k].estimate > b]
        verdict = (
            "first model: within the absolute bounds, promoted"
            if not failures
            else "first model refused: " + "; ".join(failures)
        )
        inputs = {"challenger": {k: v.as_dict() for k, v in figures.items()}, "policy": vars(policy)}
        return GateDecision(challenger, None, not failures, verdict, inputs)
    if challenger == champion:
        return GateDecision(
            challenger, champion, True, "the challenger already is the champion", {"policy": vars(policy)}
        )
    if not isinstance(evidence, Comparison):
        raise TypeError("a challenger is judged against a champion on a paired comparison")
    d = evidence.difference
    level = f"{evidence.difference['mce'].level:.0%} interval"
    mce_bound = -policy.mce_relative_margin * evidence.b["mce"].estimate
    failures = []
    if not d["mce"].below(mce_bound):
        failures.append(
            f"mCE is not better beyond noise: challenger - champion {d['mce'].text(signed=True)} ({level}) "
            f"does not lie wholly below {mce_bound:+.4f}"
        )
    for key, name, tolerance in GUARDED:
        allowed = getattr(policy, tolerance)
        if d[key].above(allowed):
            failures.append(
                f"{name} is worse beyond noise: challenger - champion {d[key].text(signed=True)} ({level}) "
                f"lies wholly above {allowed:+.4f}"
            )
    reads_live = policy.use_live_evidence or policy.require_live_evidence
    if live is not None and reads_live:
        failures += live_failures(live, policy)
    elif policy.require_live_evidence and not failures:
        failures.append(
            f"passes offline, held for the scoring service's evidence: fewer than {policy.live_min_labelled} "
            "labelled predictions of the challenger and of the champion so far (serve it in shadow or split mode, "
            "then run judge_challenger)"
        )
    live_text = (
        f"; in the scoring service ({live.sample}) error difference {live.difference['error'].text(signed=True)}"
        if live is not None and reads_live
        else ""
    )
    verdict = (
        f"promoted: mCE {evidence.a['mce'].estimate:.4f} vs {evidence.b['mce'].estimate:.4f}, difference "
        f"{d['mce'].text(signed=True)} ({level}, {evidence.n} evaluation images); clean error "
        f"{evidence.a['clean_error'].estimate:.4f} vs {evidence.b['clean_error'].estimate:.4f}{live_text}"
        if not failures
        else "refused: " + "; ".join(failures)
    )
    inputs = {**evidence.as_dict(("challenger", "champion")), "policy": vars(policy)}
    if live is not None:
        inputs["live"] = {**live.as_dict(), "used": reads_live}
    return GateDecision(challenger, champion, not failures, verdict, inputs, d["mce"])
