"""When to retrain on its own: the retraining trigger's rules, decided from what changed since the last
automatic attempt (not since the last promotion), so a refused challenger is never retrained in a loop.

Pure decisions over plain values: the sensor (``dc_pipeline.defs.automation.sensors``) reads the recorded
attempts, the drift verdicts and the image counts, looks up each attempt's outcome, and asks
:func:`decide`. Times are naive UTC.

The rules, in the order they hold a request back:

1. ``no dataset``: nothing is published to train on.
2. ``waiting for launch``: the last request has no run yet; after :data:`LAUNCH_GRACE` it is requested
   again under the same run key (the daemon never launches one key twice).
3. ``nothing new``: no drift verdict reported after the last attempt, and the current dataset's images
   that neither the last attempt's dataset nor the champion's hold stay under the policy's share.
4. ``same data``: the current dataset version was already retrained automatically, whatever came of it.
   A new dataset version re-arms the trigger; so does ``Policy.rearm_at`` once it has passed, for
   one more attempt; a manual ``retrain`` launch is always possible.
5. ``back-off``: after a refused or failed attempt, wait ``backoff_minutes``, doubled for every further
   consecutive refusal or failure (at most :data:`MAX_BACKOFF`).
6. ``daily cap``: at most ``max_attempts_per_day`` automatic attempts in any 24 hours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Outcomes of an attempt (read from its run and the gate's verdict, never stored).
PROMOTED = "promoted"
REFUSED = "refused"
FAILED = "failed"
SUCCEEDED = "succeeded without a gate verdict"
RUNNING = "running"
NOT_LAUNCHED = "not launched"
UNSUCCESSFUL = frozenset({REFUSED, FAILED})

# Rules (the first words of every skip message).
NO_DATASET = "no dataset"
WAITING_FOR_LAUNCH = "waiting for launch"
NOTHING_NEW = "nothing new"
SAME_DATA = "same data"
BACK_OFF = "back-off"
DAILY_CAP = "daily cap"
REQUEST = "request"
REQUEST_AGAIN = "request again"

LAUNCH_GRACE = timedelta(minutes=10)
"""A request whose run has not appeared after this long was lost before launch."""
MAX_BACKOFF = timedelta(days=7)
DAY = timedelta(hours=24)
FINISHED_STATUSES = {"SUCCESS": SUCCEEDED, "FAILURE": FAILED, "CANCELED": FAILED}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Policy:
    new_data_share: float = 0.20
    backoff_minutes: float = 60.0
    max_attempts_per_day: int = 4
    rearm_at: datetime | None = None


@dataclass(frozen=True)
class Attempt:
    """One automatic retraining request, as recorded before it was handed to the daemon."""

    attempted_at: datetime
    dataset_hash: str
    attempt: int  # 1 for the first attempt on this dataset, 2 after a re-arm, ...
    run_key: str
    dagster_run_id: str | None = None  # filled in once its run is found


@dataclass(frozen=True)
class Baseline:
    """What the trigger compares with: drift verdicts reported after ``since`` count, and images of the
    current dataset in none of ``datasets`` are new."""

    since: datetime | None
    datasets: tuple[str, ...]


@dataclass(frozen=True)
class Evidence:
    """What changed since the baseline."""

    drifted: tuple[str, ...] = ()  # "source/batch" with a `drift` verdict reported after the baseline
    new_images: int = 0  # images of the current dataset in none of the baseline's datasets
    known_images: int = 0  # images of the baseline's datasets (0: nothing to compare with yet)

    @property
    def new_share(self) -> float:
        return self.new_images / max(self.known_images, 1)

    def figures(self) -> dict:
        return {
            "drifted_batches": len(self.drifted),
            "new_images": self.new_images,
            "compared_images": self.known_images,
            "new_share": round(self.new_share, 4),
        }


@dataclass(frozen=True)
class Decision:
    rule: str  # REQUEST, REQUEST_AGAIN or the rule that held the request back
    message: str
    run_key: str | None = None
    dataset_hash: str | None = None
    attempt: int | None = None
    reasons: tuple[str, ...] = ()

    @property
    def requests(self) -> bool:
        return self.run_key is not None

    @property
    def records_attempt(self) -> bool:
        """A new attempt to record (a request again reuses the recorded one)."""
        return self.rule == REQUEST


def run_key(dataset_hash: str, attempt: int) -> str:
    """The run key of an attempt: the same dataset and attempt number always give the same key."""
    return f"retrain:{dataset_hash}:{attempt}"


def outcome_of(run_status: str, gate_passed: bool | None) -> str:
    """An attempt's outcome from its run's status and the gate's latest verdict in that run. A refusal
    is a refusal whether the gate fails the run (a blocking check) or records it in a successful run."""
    if gate_passed is False:
        return REFUSED
    if run_status not in FINISHED_STATUSES:
        return RUNNING
    if run_status == "SUCCESS" and gate_passed:
        return PROMOTED
    return FINISHED_STATUSES[run_status]


def counted(attempts: Sequence[Attempt], policy: Policy, now: datetime) -> list[Attempt]:
    """The attempts the same-data rule, the back-off and the baseline remember, oldest first: all of them,
    or, once ``policy.rearm_at`` has passed, those made after it (the daily cap counts every attempt)."""
    ordered = sorted(attempts, key=lambda a: a.attempted_at)
    if policy.rearm_at is None or policy.rearm_at > now:
        return ordered
    return [a for a in ordered if a.attempted_at >= policy.rearm_at]


def baseline(
    attempts: Sequence[Attempt],
    policy: Policy,
    now: datetime,
    champion_dataset: str | None,
    champion_at: datetime | None,
) -> Baseline:
    """Compare with the last remembered attempt and the champion: drift counts when reported after the
    later of the two, and new images are those in neither's dataset."""
    remembered = counted(attempts, policy, now)
    last = remembered[-1] if remembered else None
    times = [t for t in (last and last.attempted_at, champion_at) if t is not None]
    datasets = tuple(dict.fromkeys(d for d in (last and last.dataset_hash, champion_dataset) if d))
    return Baseline(max(times) if times else None, datasets)


def reasons(evidence: Evidence, policy: Policy) -> list[str]:
    out = []
    if evidence.drifted:
        out.append("drift in " + ", ".join(evidence.drifted))
    if evidence.known_images and evidence.new_share >= policy.new_data_share:
        out.append(
            f"{evidence.new_images} images of the current dataset ({evidence.new_share:.0%} of the last "
            f"trained dataset) are new (threshold {policy.new_data_share:.0%})"
        )
    return out


def backoff_until(
    remembered: Sequence[Attempt], policy: Policy, outcome: Callable[[Attempt], str]
) -> tuple[datetime | None, int]:
    """When the back-off ends, and after how many consecutive refused or failed attempts (newest first)."""
    if policy.backoff_minutes <= 0 or not remembered:
        return None, 0
    base = timedelta(minutes=policy.backoff_minutes)
    most = 1 + max(0, math.ceil(math.log2(MAX_BACKOFF / base)))  # more doublings than this reach the cap
    streak = 0
    for attempt in reversed(remembered):
        if streak >= most or outcome(attempt) not in UNSUCCESSFUL:
            break
        streak += 1
    if not streak:
        return None, 0
    return remembered[-1].attempted_at + min(base * 2 ** (streak - 1), MAX_BACKOFF), streak


def decide(
    now: datetime,
    policy: Policy,
    dataset_hash: str | None,
    attempts: Sequence[Attempt],
    evidence: Evidence,
    outcome: Callable[[Attempt], str],
) -> Decision:
    """Request a retraining of ``dataset_hash`` (the current dataset version) or say which rule holds it
    back. ``outcome`` is asked only for the attempts a rule needs."""
    if dataset_hash is None:
        return Decision(NO_DATASET, f"{NO_DATASET}: no dataset version is published yet")
    ordered = sorted(attempts, key=lambda a: a.attempted_at)
    last = ordered[-1] if ordered else None
    if last is not None and outcome(last) == NOT_LAUNCHED:
        if now - last.attempted_at < LAUNCH_GRACE:
            return Decision(
                WAITING_FOR_LAUNCH,
                f"{WAITING_FOR_LAUNCH}: the request {last.run_key} of {last.attempted_at:%Y-%m-%d %H:%M} has no run yet",
            )
        return Decision(
            REQUEST_AGAIN,
            f"the request {last.run_key} never became a run: requested again under the same key",
            last.run_key,
            last.dataset_hash,
            last.attempt,
            (f"the request of {last.attempted_at:%Y-%m-%d %H:%M} never became a run",),
        )
    why = reasons(evidence, policy)
    if not why:
        return Decision(
            NOTHING_NEW,
            f"{NOTHING_NEW}: no drift and not enough new data since the last attempt and the champion "
            f"{evidence.figures()}",
        )
    remembered = counted(ordered, policy, now)
    same = [a for a in remembered if a.dataset_hash == dataset_hash]
    if same:
        return Decision(
            SAME_DATA,
            f"{SAME_DATA}: dataset {dataset_hash[:12]} was already retrained automatically at "
            f"{same[-1].attempted_at:%Y-%m-%d %H:%M} ({outcome(same[-1])}); a new dataset version, a manual "
            "`retrain` run or the policy's rearm_at lets it run again",
        )
    until, streak = backoff_until(remembered, policy, outcome)
    if until is not None and now < until:
        return Decision(
            BACK_OFF,
            f"{BACK_OFF}: {streak} refused or failed attempt(s) in a row, the last at "
            f"{remembered[-1].attempted_at:%Y-%m-%d %H:%M}; next attempt from {until:%Y-%m-%d %H:%M}",
        )
    today = [a for a in ordered if now - a.attempted_at < DAY]
    if len(today) >= policy.max_attempts_per_day:
        until = min(a.attempted_at for a in today) + DAY if today else None
        return Decision(
            DAILY_CAP,
            f"{DAILY_CAP}: {len(today)} automatic attempt(s) in the last 24 hours (at most "
            f"{policy.max_attempts_per_day})" + (f"; next from {until:%Y-%m-%d %H:%M}" if until else ""),
        )
    number = 1 + sum(a.dataset_hash == dataset_hash for a in ordered)
    return Decision(REQUEST, "; ".join(why), run_key(dataset_hash, number), dataset_hash, number, tuple(why))
