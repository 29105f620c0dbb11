"""A drift report as markdown or as a standalone HTML page.

The report is taken as it comes (any ``DriftReport``): ``policy`` imports this module, not the reverse.
"""

from __future__ import annotations

import base64
import html as _html
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["report_html", "report_markdown"]


def report_markdown(report: Any) -> str:
    """A readable report of a ``DriftReport``."""
    t = report.thresholds
    lines = [f"# Drift report: **{report.verdict}**", ""]
    lines += [f"- {r}" for r in report.reasons] or ["- no test family rejected"]
    lines += ["", "## Image features", "", _md_table(_feature_display(report.features))]
    if report.embeddings is not None:
        e = report.embeddings
        lines += [
            "",
            "## Embeddings (MMD)",
            "",
            f"MMD^2 = {e['mmd2']:.4g}, permutation p = {e['p_value']:.4g} ({e['n_permutations']} "
            f"permutations), bandwidth {e['bandwidth']:.3g}, subsample {e['n_ref_used']} ref / "
            f"{e['n_cur_used']} batch",
        ]
    for title, d in (("Labels", report.labels), ("Sources", report.sources)):
        if d is not None:
            lines += ["", f"## {title}", "", _distribution_summary(d), "", _md_table(_distribution_frame(d))]
    if report.predictions is not None:
        p = report.predictions
        lines += [
            "",
            "## Predictions",
            "",
            f"confidence KS {p['confidence_ks']:.3f} (p {p['confidence_p_value']:.3g}); mean confidence "
            f"{p['mean_confidence_ref']:.3f} (test) -> {p['mean_confidence_cur']:.3f} (batch); "
            f"predicted classes: {_distribution_summary(p['classes'])}",
        ]
    if report.error is not None:
        e = report.error
        lines += [
            "",
            "## Error",
            "",
            f"test {e['test_error']:.3f} (n={e['n_test']}) -> batch "
            f"{e['batch_error']:.3f} (n={e['n_batch']}), increase {e['increase']:+.3f}, "
            f"one-sided Fisher p {e['p_value']:.3g}",
        ]
    fam = pd.DataFrame(report.families).T
    lines += [
        "",
        "## Test families (Holm across families)",
        "",
        _md_table(fam) if len(fam) else "(none)",
        "",
        "## Thresholds",
        "",
        ", ".join(f"{k}={v}" for k, v in t.items()),
    ]
    return "\n".join(lines) + "\n"


def report_html(report: Any, plots: dict[str, bytes] | None = None) -> str:
    """A ``DriftReport`` as a standalone HTML page: verdict, reasons, tables and the given PNGs inlined as
    base64."""
    esc = _html.escape
    body = [f"<h1>Drift report: <span class='{esc(report.verdict)}'>{esc(report.verdict)}</span></h1>", "<ul>"]
    body += [f"<li>{esc(r)}</li>" for r in report.reasons] or ["<li>no test family rejected</li>"]
    body += ["</ul>"]
    for name, png in (plots or {}).items():
        body.append(
            f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
            f'alt="{esc(name)}"><figcaption>{esc(name)}</figcaption></figure>'
        )
    body += ["<h2>Image features</h2>", _feature_display(report.features).to_html(float_format="%.4g", na_rep="n/a")]
    for title, d in (("Labels", report.labels), ("Sources", report.sources)):
        if d is not None:
            body += [
                f"<h2>{title}</h2><p>{esc(_distribution_summary(d))}</p>",
                _distribution_frame(d).to_html(float_format="%.4g", na_rep="n/a"),
            ]
    body += ["<h2>All values</h2>", pd.DataFrame(report.rows()).to_html(index=False, float_format="%.4g", na_rep="n/a")]
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}.drift{color:#b00}"
        ".warn{color:#b60}.none{color:#080}img{max-width:100%}"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Drift report</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _feature_display(table: pd.DataFrame) -> pd.DataFrame:
    return table[["ks_statistic", "p_value", "p_adjusted", "wasserstein_std", "psi", "ref_mean", "cur_mean", "drifted"]]


def _distribution_frame(d: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ref_share": d["ref_share"],
            "cur_share": d["cur_share"],
            "ref_count": d["ref_counts"],
            "cur_count": d["cur_counts"],
        },
        index=pd.Index([str(c) for c in d["categories"]]),
    )


def _distribution_summary(d: dict[str, Any]) -> str:
    new = f"; new: {', '.join(map(str, d['new_categories']))}" if d["new_categories"] else ""
    return (
        f"chi2 {d['chi2']:.2f} (dof {d['dof']}, p {d['p_value']:.3g}), JS distance {d['js_distance']:.3f}, "
        f"n {d['n_ref']} ref / {d['n_cur']} batch{new}"
    )


def _md_table(frame: pd.DataFrame) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}" if np.isfinite(v) else "n/a"  # e.g. no test on a feature constant in both
        return str(v)

    head = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [fmt(v) for v in row.tolist()]) + " |")
    return "\n".join(lines)
