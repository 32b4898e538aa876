"""The sweep report: which CA design is best for its cost, and how sure are we?

``build_report`` loads a sweep (``analysis.results``), answers the ablation questions
(``analysis.stats``), finds the accuracy-cost fronts (``analysis.pareto``), draws the figures
(``analysis.plots``) and writes, into one directory:

* ``report.html``: self-contained (figures embedded as base64 PNG, inline CSS), opens offline;
* ``report.md`` + ``figures/*.png``: the same content as Markdown;
* ``trials.csv|parquet``, ``configs.csv|parquet``, ``comparisons.csv``: the tables.

It works on a finished, running or interrupted sweep (running and waiting trials are listed);
failed and pruned trials are listed with their reasons, never hidden. Storage passwords are
masked everywhere.

CLI (prints the answers and the report path)::

    .venv/bin/python -m analysis.report multirun/ca_ofat
    .venv/bin/python -m analysis.report sqlite:///multirun/ca_joint/optuna.db --study ca_joint --out /tmp/r
    .venv/bin/python -m analysis.report 'postgresql://user:pw@host/db' --study ca_joint
"""
from __future__ import annotations

import argparse
import base64
import datetime
import html
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from analysis import plots
from analysis.pareto import COST_AXES, ParetoFront, pareto_front
from analysis.results import Results, load_results, short_name
from analysis.stats import (Comparison, Importance, compare, comparisons_frame, factor_summaries,
                            metric_label, param_importances)

__all__ = ["ReportPaths", "build_report", "main"]

_MAX_ROWS = 200  # rows of a listing in the report; the CSVs hold everything


@dataclass
class ReportPaths:
    """What ``build_report`` wrote.

    Attributes:
        out_dir: the report directory.
        html: self-contained HTML report.
        markdown: Markdown twin (figures in ``figures/``).
        figures: figure name -> PNG path.
        tables: table name -> CSV/parquet path.
        answers: the answers as plain lines (best-for-cost, most accurate, one per factor and
            one per comparison), as printed by the CLI.
        seconds: time taken.
    """
    out_dir: Path
    html: Path
    markdown: Path
    figures: Dict[str, Path] = field(default_factory=dict)
    tables: Dict[str, Path] = field(default_factory=dict)
    answers: List[str] = field(default_factory=list)
    seconds: float = 0.0


# -- a tiny document model rendered to HTML and Markdown ---------------------------------------


class _Doc:
    def __init__(self) -> None:
        self.blocks: List[Tuple[str, Any]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def warn(self, text: str) -> None:
        self.blocks.append(("warn", text))

    def ul(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> None:
        self.blocks.append(("table", (list(header), [[_cell(v) for v in r] for r in rows], note)))

    def image(self, name: str, png: Optional[bytes], alt: str) -> None:
        if png:
            self.blocks.append(("img", (name, png, alt)))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    # rendering
    def html(self, title: str) -> str:
        e = html.escape
        out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
               f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
               f"<title>{e(title)}</title><style>{_CSS}</style></head><body><main>"]
        for kind, x in self.blocks:
            if kind == "h":
                level, text = x
                anchor = _anchor(text)
                out.append(f"<h{level} id=\"{anchor}\">{e(text)}</h{level}>")
            elif kind == "p":
                out.append(f"<p>{e(x)}</p>")
            elif kind == "warn":
                out.append(f"<p class=\"warn\">{e(x)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in x) + "</ul>")
            elif kind == "table":
                header, rows, note = x
                out.append("<div class=\"tbl\"><table><thead><tr>"
                           + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
                out.extend("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                out.append("</tbody></table></div>")
                if note:
                    out.append(f"<p class=\"note\">{e(note)}</p>")
            elif kind == "img":
                name, png, alt = x
                data = base64.b64encode(png).decode("ascii")
                out.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{e(alt)}\">"
                           f"<figcaption>{e(alt)}</figcaption></figure>")
            elif kind == "pre":
                out.append(f"<pre>{e(x)}</pre>")
        out.append("</main></body></html>\n")
        return "\n".join(out)

    def markdown(self, figure_dir: str) -> str:
        out: List[str] = []
        for kind, x in self.blocks:
            if kind == "h":
                out.append("#" * x[0] + " " + x[1])
            elif kind == "p":
                out.append(_md_text(x))
            elif kind == "warn":
                out.append("> **Note:** " + _md_text(x))
            elif kind == "ul":
                out.append("\n".join("- " + _md_text(i) for i in x))
            elif kind == "table":
                header, rows, note = x
                lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
                         "|" + "|".join("---" for _ in header) + "|"]
                lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
                out.append("\n".join(lines) + (f"\n\n*{_md_text(note)}*" if note else ""))
            elif kind == "img":
                name, _, alt = x
                out.append(f"![{_md_text(alt)}]({figure_dir}/{name}.png)")
            elif kind == "pre":
                out.append("```\n" + x + "\n```")
        return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#1d1d1f;background:#fff;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{margin-top:1.4em}p,li{line-height:1.45}
.warn{background:#fff4e5;border-left:4px solid #de8f05;padding:8px 12px}
.note{color:#555;font-size:.9em}
.tbl{overflow-x:auto;margin:.6em 0}
table{border-collapse:collapse;font-size:.82em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f5f7}tr:nth-child(even) td{background:#fafbfc}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:.85em}
"""


def _anchor(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _md_text(text: str) -> str:
    return str(text).replace("*", "\\*").replace("_", "\\_").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(text: Any) -> str:
    return _md_text(str(text)).replace("|", "\\|").replace("\n", " ")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return ""
        return f"{v:.4g}"
    if isinstance(v, (pd.Timestamp, datetime.datetime)):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    try:
        if pd.isna(v):
            return ""
    except (TypeError, ValueError):
        pass
    return str(v)


def _pct(v: float, digits: int = 1) -> str:
    if v is None or not math.isfinite(v):
        return ""
    return f"{v:+.{digits}f}".replace("-", "\u2212")


def _acc(mean: float, lo: float, hi: float, n: Any = None) -> str:
    """``62.10% [61.50, 62.70], 5 seeds``."""
    if not math.isfinite(mean):
        return "n/a"
    text = f"{mean:.2f}%"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:.2f}, {hi:.2f}]"
    if n is not None:
        text += f", {int(n)} seed{'s' if int(n) != 1 else ''}"
    return text


# -- setup ---------------------------------------------------------------------------------------


def _distinct(values: Iterable[Any]) -> List[Any]:
    seen: Dict[str, Any] = {}
    for v in values:
        if v is None:
            continue
        seen.setdefault(json.dumps(v, sort_keys=True, default=str), v)
    return list(seen.values())


def _kv(d: Mapping[str, Any], keys: Optional[Sequence[str]] = None) -> str:
    keys = keys if keys is not None else list(d)
    parts = []
    for k in keys:
        if k in d and d[k] is not None and d[k] != {}:
            v = d[k]
            if isinstance(v, Mapping):
                v = ", ".join(f"{a} {b}" for a, b in v.items())
            parts.append(f"{k}: {v}")
    return "; ".join(parts)


def adaptive_repeats_text(res: Results) -> Optional[str]:
    """Which configurations got extra seeds from ``hydra.sweeper.adaptive_repeats`` (None if none)."""
    if "extra_seeds_of" not in res.trials.columns:
        return None
    ex = res.trials[res.trials["extra_seeds_of"].notna() & (res.trials["state"] == "complete")]
    if not len(ex):
        return None
    labels = sorted({str(v) for v in ex["label"]})
    return (f"{len(labels)} configuration(s) got extra paired seeds because their 95% interval "
            f"overlapped the Pareto front: " + "; ".join(labels))


def _setup_rows(res: Results) -> List[Tuple[str, str]]:
    done = res.trials[res.trials["state"] == "complete"]["number"].tolist()
    docs = [res.docs[n] for n in done if n in res.docs] or list(res.docs.values())
    rows: List[Tuple[str, str]] = []
    if not docs:
        return [("metrics.json", "no trial has written metrics.json yet: setup unknown")]

    def many(label: str, values: List[Any], fmt) -> None:
        vals = _distinct(values)
        if not vals:
            return
        text = fmt(vals[0])
        if len(vals) > 1:
            text += f" (differs across trials: {len(vals)} variants; e.g. {fmt(vals[1])})"
        rows.append((label, text))

    many("data", [d.get("data") for d in docs], lambda x: _kv(
        x, ["dataset", "format", "root", "num_classes", "image_size", "sizes", "split_seed"]))
    many("augmentation", [(d.get("data") or {}).get("augmentation") for d in docs], str)
    many("model", [(d.get("config") or {}).get("model") for d in docs], _kv)
    train = [(d.get("config") or {}).get("train") for d in docs]
    many("budget per trial", train, lambda x: _kv(
        x, ["epochs", "max_steps", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs",
            "label_smoothing", "amp"]))
    t = res.trials[res.trials["state"] == "complete"]
    if len(t):
        ep = t["epochs_run"].dropna()
        steps = pd.to_numeric(t.get("steps", pd.Series(dtype=float)), errors="coerce").dropna()
        text = f"epochs {int(ep.min())}\u2013{int(ep.max())}" if len(ep) else ""
        if len(steps):
            text += f"; optimizer steps {int(steps.min())}\u2013{int(steps.max())}"
        if "wall_time_s" in t.columns and t["wall_time_s"].notna().any():
            text += f"; wall time per trial median {float(t['wall_time_s'].median()):.1f} s"
        rows.append(("training run (complete trials)", text))
    seeds = sorted(res.counted()["seed"].dropna().unique().tolist(), key=str)
    per = res.configs["n_seeds"] if "n_seeds" in res.configs.columns else pd.Series(dtype=int)
    per = per[per > 0]
    rows.append(("seeds", (" ".join(map(str, seeds)) or "none") +
                 (f" (seeds per configuration: {int(per.min())}\u2013{int(per.max())})" if len(per) else "")))
    adaptive = adaptive_repeats_text(res)
    if adaptive:
        rows.append(("adaptive repeats", adaptive))
    rows.append(("objectives", ", ".join(f"{o} ({d})" for o, d in zip(res.objectives, res.directions))))
    rows.append(("accuracy compared", f"{res.accuracy} (final epoch, percent; 'pts' = percentage points)"))
    costs = [d.get("cost") or {} for d in docs]
    notes = _distinct([c.get("conventions") for c in costs])
    if notes:
        for conv, note in notes[0].items():
            rows.append((f"FLOP convention {conv}", note))
    many("cost input shape", [c.get("input_shape") for c in costs], str)
    audit: Dict[str, Dict[str, List[int]]] = {}
    for c in costs:
        for conv, ops in (c.get("audit") or {}).items():
            for op, n in ops.items():
                audit.setdefault(conv, {}).setdefault(op, []).append(int(n))
        for conv in (c.get("audit") or {}):
            audit.setdefault(conv, {})
    for conv, ops in audit.items():
        if not ops:
            rows.append((f"uncounted ops under {conv}", "none (every computing op is counted)"))
            continue
        items = [f"{op} \u00d7{min(ns)}" + (f"\u2013{max(ns)}" if max(ns) != min(ns) else "")
                 for op, ns in sorted(ops.items())]
        rows.append((f"uncounted ops under {conv}", ", ".join(items) + " (occurrences per model)"))
    many("hardware", [d.get("hardware") for d in docs], _kv)
    if "threads" in res.trials.columns:
        th = pd.to_numeric(res.trials["threads"], errors="coerce").dropna().unique().tolist()
        if th:
            rows.append(("torch threads per trial", ", ".join(str(int(x)) for x in sorted(th))))
    many("versions", [d.get("versions") for d in docs], _kv)
    return rows


# -- answers ---------------------------------------------------------------------------------------


def _front_sentence(front: ParetoFront) -> str:
    name = COST_AXES[front.axis][0]
    t = front.table
    if t.empty:
        return f"Best for its {name}: {front.reference_note}."
    f = t[t["on_front"]].sort_values("cost")
    parts = [f"{_short(r['label'])} ({r['cost']:.4g} {front.unit}, {_acc(r['mean'], r['lo'], r['hi'], r['n'])})"
             for _, r in f.head(8).iterrows()]
    more = f" and {len(f) - 8} more" if len(f) > 8 else ""
    possible = int((t["possibly_optimal"] & ~t["on_front"]).sum())
    single = int((t["n"] < 2).sum())
    text = (f"Best for its {name}: the front has {len(f)} configuration{'s' if len(f) != 1 else ''}, "
            f"cheapest first: " + "; ".join(parts) + more + ". ")
    off_with_interval = int((~t["on_front"] & (t["n"] >= 2)).sum())
    if possible:
        text += (f"{possible} more {'is' if possible == 1 else 'are'} possibly optimal "
                 f"(95% interval reaches the front). ")
    elif off_with_interval:
        text += "No other configuration's 95% interval reaches the front. "
    if single:
        text += f"{single} configuration{'s have' if single != 1 else ' has'} one seed only (no interval). "
    return text + f"Hypervolume {front.hypervolume:.4g} ({front.reference_note})."


def _short(label: Any, limit: int = 60) -> str:
    text = " ".join(short_name(p) for p in str(label).split(" "))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _best_sentence(res: Results) -> Optional[str]:
    c = res.configs
    acc = res.accuracy
    if c.empty or f"{acc}_mean" not in c.columns or c[f"{acc}_mean"].notna().sum() == 0:
        return None
    best = c.loc[c[f"{acc}_mean"].idxmax()]
    lo = best[f"{acc}_lo"]
    text = (f"Most accurate: {_short(best['label'])}, {metric_label(acc)} "
            f"{_acc(best[f'{acc}_mean'], lo, best[f'{acc}_hi'], best['n_seeds'])}"
            + (f", {best['madds'] / 1e6:.4g} M madds" if math.isfinite(best.get("madds", math.nan)) else "") + ". ")
    if math.isfinite(lo):
        tied = c[(c["config"] != best["config"]) & (c[f"{acc}_hi"] >= lo)]
        text += (f"{len(tied)} other configuration{'s' if len(tied) != 1 else ''} "
                 f"{'have' if len(tied) != 1 else 'has'} a 95% interval reaching its lower bound "
                 f"(not clearly worse).")
    else:
        text += "Its interval is unknown (fewer than 2 seeds): it cannot be told apart from close runners-up."
    return text


# -- build -----------------------------------------------------------------------------------------


def _default_out(res: Results) -> Path:
    if res.sweep_dir is not None:
        return res.sweep_dir / "report"
    return Path.cwd() / f"report-{res.study_name}"


def build_report(source: str | os.PathLike, study_name: Optional[str] = None,
                 out_dir: Optional[str | os.PathLike] = None, *, alpha: float = 0.05, min_n: int = 3,
                 min_epochs: int = 5, chance_margin: float = 5.0, n_resamples: int = 4999) -> ReportPaths:
    """Write the HTML and Markdown reports and the result tables of a sweep.

    Args:
        source: sweep directory (with ``optuna.db``), SQLite/journal file, or storage URL.
        study_name: the study (optional when the storage holds one).
        out_dir: report directory (default: ``<sweep dir>/report``, or
            ``./report-<study>`` for a remote storage).
        alpha: significance level of Holm-adjusted p-values.
        min_n: fewest seed pairs (or trials per side) to answer a comparison.
        min_epochs: fewest training epochs to answer a comparison.
        chance_margin: points above chance under which accuracy counts as near chance.
        n_resamples: bootstrap resamples.

    Returns:
        ``ReportPaths`` (paths and the answer lines).

    Example::

        paths = build_report("multirun/ca_ofat")
        print(paths.html, *paths.answers, sep="\\n")
    """
    started = time.perf_counter()
    res = load_results(source, study_name)
    out = Path(out_dir) if out_dir is not None else _default_out(res)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)

    comps = compare(res, alpha=alpha, min_n=min_n, min_epochs=min_epochs,
                    chance_margin=chance_margin, n_resamples=n_resamples)
    summaries = factor_summaries(comps)
    imp = param_importances(res)
    chance = res.chance()
    fronts = {axis: pareto_front(res.configs, res.accuracy, axis, chance=chance) for axis in COST_AXES}

    figures: Dict[str, Optional[bytes]] = {}
    for axis, front in fronts.items():
        figures[f"pareto_{axis}"] = plots.pareto_plot(front, res.reference)
    figures["effects"] = plots.effects_plot(comps)
    figures["importance"] = plots.importance_plot(imp)
    figures["learning_curves"] = plots.learning_curves_plot(res)
    figures["history"] = plots.history_plot(res)
    fig_paths: Dict[str, Path] = {}
    for name, png in figures.items():
        if png:
            fig_paths[name] = figdir / f"{name}.png"
            fig_paths[name].write_bytes(png)

    tables = {k: Path(v) for k, v in res.export(out).items()}
    tables["comparisons_csv"] = out / "comparisons.csv"
    comparisons_frame(comps).to_csv(tables["comparisons_csv"], index=False)

    answers = _answers(res, fronts, comps, summaries)
    doc = _document(res, fronts, comps, summaries, imp, figures, answers, alpha, tables, out)
    title = f"CA sweep report: {res.study_name}"
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(doc.html(title), encoding="utf-8")
    md_path.write_text(doc.markdown("figures"), encoding="utf-8")
    return ReportPaths(out_dir=out, html=html_path, markdown=md_path, figures=fig_paths, tables=tables,
                       answers=answers, seconds=time.perf_counter() - started)


def _answers(res: Results, fronts: Mapping[str, ParetoFront], comps: Sequence[Comparison],
             summaries: Mapping[str, str]) -> List[str]:
    if res.counts().get("complete", 0) == 0:
        return [_no_comparison_reason(res)]
    lines = [_bottom_line(comps)] if comps else []
    best = _best_sentence(res)
    if best:
        lines.append(best)
    for front in fronts.values():
        lines.append(_front_sentence(front))
    for factor, summary in summaries.items():
        lines.append(summary)
        lines.extend("  - " + c.sentence for c in comps if c.factor == factor)
    if not comps:
        lines.append(_no_comparison_reason(res))
    return lines


def _bottom_line(comps: Sequence[Comparison]) -> str:
    """One sentence: which design changes beat the reference, which lose, how many are open."""
    better = [c for c in comps if c.significant and c.difference.diff > 0]
    worse = [c for c in comps if c.significant and c.difference.diff < 0]
    thin = [c for c in comps if c.thin]
    ref = "the reference"

    def name(c: Comparison) -> str:
        cost = c.cost.get("madds")
        extra = f", {_pct(cost)}% madds" if cost is not None and math.isfinite(cost) else ""
        return f"{short_name(c.factor)}={c.level} ({_pct(c.difference.diff)} pts{extra})"

    if better:
        text = (f"Bottom line: {len(better)} of {len(comps)} design changes beat {ref} significantly: "
                + "; ".join(name(c) for c in sorted(better, key=lambda c: -c.difference.diff)) + ".")
    else:
        text = f"Bottom line: none of the {len(comps)} design changes beats {ref} significantly."
    if worse:
        text += f" {len(worse)} {'is' if len(worse) == 1 else 'are'} significantly worse."
    if thin:
        text += f" {len(thin)} {'has' if len(thin) == 1 else 'have'} too little evidence to answer."
    return text


def _no_comparison_reason(res: Results) -> str:
    if res.counts().get("complete", 0) == 0:
        return "No trial has completed yet: nothing to answer."
    if res.kind == "single":
        return "No design factor was swept (only seeds): there is nothing to compare."
    if res.reference is None:
        return ("No reference configuration (paper default) was found: factor effects need one "
                "(enqueue a paper_default trial or name a variant paper_default).")
    return "No comparison could be formed from the completed trials."


_KIND = {
    "ofat": "one factor at a time around the reference; each variant is compared with the reference "
            "seed by seed (paired)",
    "variants": "named variants; each is compared with the reference seed by seed (paired)",
    "joint": "factors sampled jointly; each level's marginal effect is compared with the default "
             "level over configurations (unpaired, seeds averaged per configuration; other factors vary)",
    "single": "no design factor swept",
}


def _document(res: Results, fronts, comps, summaries, imp: Importance, figures, answers,
              alpha: float, tables: Mapping[str, Path], out: Path) -> _Doc:
    d = _Doc()
    counts = res.counts()
    order = ["complete", "pruned", "failed", "running", "waiting"]
    state_text = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "no trials yet"
    d.h(1, f"Coordinate Attention sweep: {res.study_name}")
    d.p(f"Study {res.study_name} in {res.storage}. Generated "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}. Trials: {state_text}. "
        f"Design: {_KIND.get(res.kind, res.kind)}."
        + (f" Reference: {_short(res.configs.loc[res.configs['is_reference'], 'label'].iloc[0])}."
           if res.reference is not None and res.configs["is_reference"].any() else ""))
    if counts.get("running") or counts.get("waiting"):
        d.warn(f"The sweep is still running or was interrupted: {counts.get('running', 0)} trial(s) "
               f"running, {counts.get('waiting', 0)} waiting. These results are partial.")

    d.h(2, "Answers")
    d.p("Which CA design is best for its cost, and how sure are we?")
    best = _best_sentence(res)
    head = ([_bottom_line(comps)] if comps else []) + ([best] if best else []) \
        + [_front_sentence(f) for f in fronts.values()]
    d.ul(head)
    d.h(3, "Each design factor")
    if comps:
        n_family = sum(1 for c in comps if math.isfinite(c.p_holm))
        d.p(f"Differences are in percentage points of {metric_label(res.accuracy)} (level minus "
            f"reference), with 95% bootstrap intervals; p-values are Holm-corrected across the "
            f"{n_family} answerable comparisons (alpha {alpha}). Cost changes are relative to the "
            f"reference.")
        for factor, summary in summaries.items():
            d.p(summary)
            d.ul([c.sentence for c in comps if c.factor == factor])
    else:
        d.p(_no_comparison_reason(res))

    d.h(2, "Setup")
    d.table(["item", "value"], _setup_rows(res))

    d.h(2, "Accuracy vs cost")
    for axis, front in fronts.items():
        name, unit, _ = COST_AXES[axis]
        d.h(3, f"{name} ({unit})")
        d.image(f"pareto_{axis}", figures.get(f"pareto_{axis}"),
                f"{metric_label(res.accuracy)} vs {name}; error bars: 95% t-interval over seeds")
        t = front.table
        shown = t[t["on_front"] | t["possibly_optimal"]].sort_values("cost")
        if len(shown):
            d.table(["id", "configuration", f"cost ({unit})", f"{res.accuracy} mean", "95% CI", "seeds",
                     "on front", "possibly optimal"],
                    [[int(r["config_id"]), _short(r["label"], 90), r["cost"], r["mean"],
                      f"[{r['lo']:.2f}, {r['hi']:.2f}]" if math.isfinite(r["lo"]) else "", r["n"],
                      r["on_front"], r["possibly_optimal"]] for _, r in shown.head(_MAX_ROWS).iterrows()],
                    note=f"Hypervolume {front.hypervolume:.4g}; {front.reference_note}.")
        else:
            d.p("No complete configuration yet.")

    d.h(2, "Factor effects")
    d.image("effects", figures.get("effects"), "difference to the reference with 95% bootstrap intervals")
    if comps:
        f = comparisons_frame(comps)
        d.table(["factor", "level", "vs", "diff (pts)", "95% CI", "n", "test", "p", "Holm p", "verdict",
                 "madds %", "params %", "latency %"],
                [[short_name(r["factor"]), r["level"], r["reference"], _pct(r["diff"], 2),
                  f"[{_pct(r['ci_lo'], 2)}, {_pct(r['ci_hi'], 2)}]" if math.isfinite(r["ci_lo"]) else "",
                  f"{r['n']}" if r["paired"] else f"{r['n']} vs {r['n_reference']}", r["test"], r["p"],
                  r["p_holm"], ("too thin: " + r["thin"]) if isinstance(r["thin"], str) and r["thin"] else
                  ("significant" if r["significant"] else "not significant"),
                  _pct(r["d_madds_pct"]), _pct(r["d_params_pct"]), _pct(r["d_latency_pct"], 0)]
                 for _, r in f.iterrows()])

    d.h(2, "Parameter importance")
    if imp.values:
        d.image("importance", figures.get("importance"), "importance of each factor for accuracy")
        params = list(dict.fromkeys(p for v in imp.values.values() for p in v))
        d.table(["factor", *imp.values], [[short_name(p), *[imp.values[n].get(p) for n in imp.values]]
                                          for p in params])
    for name, reason in imp.skipped.items():
        d.p(f"{name}: not computed: {reason}.")

    d.h(2, "Training")
    d.image("learning_curves", figures.get("learning_curves"),
            "validation accuracy per epoch; x marks where a trial was pruned")
    d.image("history", figures.get("history"), "accuracy of each trial in start order, best so far")

    d.h(2, "Configurations")
    c = res.configs.copy()
    acc = res.accuracy
    if len(c):
        c = c.sort_values(f"{acc}_mean", ascending=False, na_position="last")
        d.table(["id", "configuration", "seeds", f"{acc} mean", "95% CI", "M madds", "M params",
                 "latency ms", "epochs", "complete/pruned/failed/running"],
                [[int(r["config_id"]), _short(r["label"], 90), r["n_seeds"], r[f"{acc}_mean"],
                  f"[{r[f'{acc}_lo']:.2f}, {r[f'{acc}_hi']:.2f}]" if math.isfinite(r[f"{acc}_lo"]) else "",
                  r["madds"] / 1e6, r["params"] / 1e6, r["latency_ms"], r["epochs_run_min"],
                  f"{r['n_complete']}/{r['n_pruned']}/{r['n_failed']}/{r['n_running']}"]
                 for _, r in c.head(_MAX_ROWS).iterrows()],
                note=(f"Top {_MAX_ROWS} of {len(c)} by accuracy; all in configs.csv." if len(c) > _MAX_ROWS
                      else "Intervals: 95% t-interval over seeds."))

    d.h(2, "Trials that did not complete")
    t = res.trials
    listed = False
    for state, header, row in (
        ("failed", ["trial", "configuration", "seed", "reason"],
         lambda r: [r["number"], _short(r["label"], 60), r["seed"],
                    (str(r["fail_reason"] or "no reason recorded"))[:400]]),
        ("pruned", ["trial", "configuration", "seed", "epochs run", f"last {acc}"],
         lambda r: [r["number"], _short(r["label"], 60), r["seed"], r["epochs_run"], r[acc]]),
        ("running", ["trial", "configuration", "seed", "started"],
         lambda r: [r["number"], _short(r["label"], 60), r["seed"], r.get("datetime_start")]),
        ("waiting", ["trial", "configuration", "seed"],
         lambda r: [r["number"], _short(r["label"], 60), r["seed"]]),
    ):
        rows = t[t["state"] == state]
        if rows.empty:
            continue
        listed = True
        d.h(3, f"{state.capitalize()} ({len(rows)})")
        d.table(header, [row(r) for _, r in rows.head(_MAX_ROWS).iterrows()],
                note=f"first {_MAX_ROWS} of {len(rows)}; all in trials.csv" if len(rows) > _MAX_ROWS else "")
    if not listed:
        d.p("None: every trial completed.")
    copies = int(t["reused_from"].notna().sum()) if "reused_from" in t.columns else 0
    if copies:
        d.p(f"{copies} trial(s) reused the stored result of an identical earlier trial; they are "
            f"listed in trials.csv but not counted as repeats.")

    d.h(2, "Files")
    d.ul([f"{p.relative_to(out) if p.is_relative_to(out) else p}" for p in tables.values()]
         + ["figures/*.png (the figures of this report)", "report.md (this report as Markdown)"])
    return d


# -- CLI ------------------------------------------------------------------------------------------


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Write the HTML + Markdown report of a sweep and print its answers.")
    ap.add_argument("source", help="sweep directory (with optuna.db), SQLite/journal file, or storage URL")
    ap.add_argument("--study", default=None, help="study name (needed when the storage holds several)")
    ap.add_argument("--out", default=None, help="report directory (default: <sweep dir>/report)")
    ap.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm (default 0.05)")
    ap.add_argument("--min-n", type=int, default=3, help="fewest seed pairs to answer (default 3)")
    ap.add_argument("--min-epochs", type=int, default=5, help="fewest training epochs to answer (default 5)")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: build the report, print the answers and where it is. Returns the exit code."""
    args = _parse(argv)
    try:
        paths = build_report(args.source, args.study, args.out, alpha=args.alpha, min_n=args.min_n,
                             min_epochs=args.min_epochs)
    except (FileNotFoundError, ValueError) as e:
        from analysis.results import _mask_text

        print(f"error: {_mask_text(str(e), args.source)}", file=sys.stderr)
        return 2
    print("Answers:")
    for line in paths.answers:
        print(line if line.startswith("  ") else f"* {line}")
    print(f"\nReport: {paths.html}\nMarkdown: {paths.markdown}\nTables: {paths.out_dir} "
          f"(trials.csv, configs.csv, comparisons.csv, *.parquet)  [{paths.seconds:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
