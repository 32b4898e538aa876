"""Figures of a sweep report, rendered off-screen (matplotlib Agg canvas, seaborn style) to PNG
bytes: accuracy vs cost with the Pareto front and error bars, per-factor effects with
intervals, learning curves with pruning decisions, optimization history, importances.

Every function returns PNG bytes, or None when there is nothing to draw. Figures never touch
pyplot's global state, so they are safe inside a sweep or a test. Large studies stay fast:
learning curves are aggregated (median and 10-90% band per epoch) with a sample of curves.
"""
from __future__ import annotations

import io
import math
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.pareto import COST_AXES, ParetoFront
from analysis.results import Results, short_name
from analysis.stats import Comparison, Importance, metric_label

__all__ = ["pareto_plot", "effects_plot", "learning_curves_plot", "history_plot",
           "importance_plot", "BASELINE_LABELS"]

# points labelled on accuracy-cost plots
BASELINE_LABELS = ("none", "se", "cbam", "eca", "ca", "paper_default")
_DPI = 100
_BLUE, _ORANGE, _GREY, _RED, _GREEN = "#0173b2", "#de8f05", "#9a9a9a", "#d55e00", "#029e73"


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib
    import seaborn as sns

    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85)}
    with matplotlib.rc_context(rc):
        yield


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return buf.getvalue()


def _short(label: str, limit: int = 28) -> str:
    text = " ".join(short_name(p) for p in str(label).split(" "))
    text = text.replace("attention.", "")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def pareto_plot(front: ParetoFront, reference_label: Optional[str] = None) -> Optional[bytes]:
    """Accuracy vs one cost axis: every configuration with its 95% interval over seeds, the
    Pareto front (line), possibly optimal configurations, labelled baselines."""
    t = front.table
    if t.empty:
        return None
    name = COST_AXES[front.axis][0]
    with _style():
        fig = _figure(7.5, 4.8)
        ax = fig.add_subplot()
        groups = (("dominated", ~t["possibly_optimal"] & ~t["on_front"], _GREY, "o"),
                  ("possibly optimal (95% CI reaches the front)", t["possibly_optimal"] & ~t["on_front"], _ORANGE, "o"),
                  ("Pareto front (mean over seeds)", t["on_front"], _BLUE, "D"))
        for label, mask, color, marker in groups:
            g = t[mask]
            if g.empty:
                continue
            lo = (g["mean"] - g["lo"]).where(g["lo"].notna(), 0).clip(lower=0)
            hi = (g["hi"] - g["mean"]).where(g["hi"].notna(), 0).clip(lower=0)
            ax.errorbar(g["cost"], g["mean"], yerr=[lo, hi], fmt=marker, color=color, ms=4 if marker == "o" else 6,
                        elinewidth=0.8, capsize=2, alpha=0.85 if marker == "D" else 0.6, label=label, zorder=3)
        f = t[t["on_front"]].sort_values("cost")
        ax.step(f["cost"], f["mean"], where="post", color=_BLUE, lw=1.2, alpha=0.8, zorder=2)
        named = len(t) <= 25 or t["label"].isin(BASELINE_LABELS).any()
        order = sorted(t.index, key=lambda i: (not (str(t.at[i, "label"]) in BASELINE_LABELS
                                                    or t.at[i, "config"] == reference_label),
                                               not t.at[i, "on_front"], -t.at[i, "mean"]))
        labels = []
        for i in order:
            r = t.loc[i]
            is_base = str(r["label"]) in BASELINE_LABELS or r["config"] == reference_label
            if not (is_base or r["on_front"] or len(t) <= 25):
                continue
            text = _short(r["label"]) if named or is_base else f"#{int(r['config_id'])}"
            if r["config"] == reference_label and not named:
                text = "reference (paper default)"
            labels.append((r["cost"], r["mean"], text, is_base))
        _place_labels(ax, labels)
        ax.set_xlabel(f"{name} ({front.unit})")
        ax.set_ylabel(f"{metric_label(front.accuracy)} (%)")
        ax.set_title(f"{metric_label(front.accuracy)} vs {name}: Pareto front "
                     f"(hypervolume {front.hypervolume:.4g})", fontsize=10)
        ax.legend(loc="lower right", fontsize=7, title="error bars: 95% t-interval over seeds",
                  title_fontsize=7)
        return _png(fig)


def _place_labels(ax, labels: Sequence[tuple], fontsize: float = 7.0) -> None:
    """Annotate points in priority order, skipping a label that would overlap one already placed
    (text extents estimated from the font size)."""
    ax.get_xlim(), ax.get_ylim()  # fix the view so data -> pixel transforms are final
    placed: List[tuple] = []
    scale = _DPI / 72.0
    for x, y, text, bold in labels:
        px, py = ax.transData.transform((x, y))
        w, h = len(text) * fontsize * 0.6 * scale, fontsize * 1.3 * scale
        for dx, dy, ha in ((4, 3, "left"), (4, -12, "left"), (-4, 3, "right"), (-4, -12, "right")):
            x0 = px + dx * scale - (w if ha == "right" else 0)
            y0 = py + dy * scale
            box = (x0, y0, x0 + w, y0 + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                placed.append(box)
                ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha,
                            fontsize=fontsize + (1 if bold else 0), color="#222222",
                            fontweight="bold" if bold else "normal",
                            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.75))
                break


def effects_plot(comparisons: Sequence[Comparison]) -> Optional[bytes]:
    """Forest plot: each factor level's accuracy difference to the reference with its 95%
    bootstrap interval; colour = verdict (Holm-corrected)."""
    comps = list(comparisons)
    if not comps:
        return None
    with _style():
        fig = _figure(7.5, 1.0 + 0.28 * len(comps))
        ax = fig.add_subplot()
        ys = np.arange(len(comps))[::-1]
        seen = set()
        for y, c in zip(ys, comps):
            d = c.difference
            if c.thin:
                color, label, face = _GREY, "too thin to answer", "white"
            elif c.significant:
                color = _GREEN if d.diff > 0 else _RED
                label, face = ("significantly better" if d.diff > 0 else "significantly worse"), color
            else:
                color, label, face = _BLUE, "not significant", _BLUE
            if math.isfinite(d.lo):
                ax.plot([d.lo, d.hi], [y, y], color=color, lw=1.5)
            ax.plot([d.diff], [y], "o", color=color, mfc=face, ms=5,
                    label=label if label not in seen else None)
            seen.add(label)
        ax.axvline(0, color="#444444", lw=0.8)
        ax.set_yticks(ys)
        ax.set_yticklabels([f"{short_name(c.factor)}={c.level} vs {c.reference}" for c in comps], fontsize=7)
        ax.set_xlabel(f"difference in {metric_label(comps[0].metric)} (percentage points)")
        ax.set_title("Effect of each design choice vs the reference (95% bootstrap CI, Holm-corrected verdicts)",
                     fontsize=9)
        ax.legend(loc="best", fontsize=7)
        return _png(fig)


def _curves(res: Results) -> Dict[int, np.ndarray]:
    """trial number -> (epochs, 2) array of (epoch, val_top1), from metrics.json or Optuna's
    intermediate values."""
    out: Dict[int, np.ndarray] = {}
    for n, doc in res.docs.items():
        h = doc.get("history") or []
        pts = [(r.get("epoch"), r.get("val_top1")) for r in h if r.get("val_top1") is not None]
        if pts:
            out[int(n)] = np.asarray(pts, dtype=float)
    if res.study is not None and len(res.objectives) == 1:
        for t in res.study.get_trials(deepcopy=False):
            if t.number not in out and t.intermediate_values:
                out[t.number] = np.asarray(sorted(t.intermediate_values.items()), dtype=float)
    return out


def learning_curves_plot(res: Results, max_curves: int = 40, seed: int = 0) -> Optional[bytes]:
    """Validation accuracy per epoch: up to ``max_curves`` individual curves (the reference's
    and a random sample), the median and 10-90% band of complete trials when there are more,
    and an x at the last epoch of every pruned trial."""
    curves = _curves(res)
    if not curves:
        return None
    state = res.trials.set_index("number")["state"].to_dict()
    complete = [n for n in curves if state.get(n) == "complete"]
    pruned = [n for n in curves if state.get(n) == "pruned"]
    ref = set(res.trials.loc[res.trials["config"] == res.reference, "number"]) if res.reference else set()
    rng = np.random.default_rng(seed)
    shown = [n for n in complete if n in ref][:10]
    rest = [n for n in complete if n not in ref]
    k = max(0, max_curves - len(shown))
    shown += [rest[i] for i in sorted(rng.choice(len(rest), size=min(k, len(rest)), replace=False))] if rest else []
    with _style():
        fig = _figure(7.5, 4.5)
        ax = fig.add_subplot()
        if len(complete) > max_curves:
            table = pd.DataFrame([(e, v) for n in complete for e, v in curves[n]], columns=["epoch", "acc"])
            q = table.groupby("epoch")["acc"].quantile([0.1, 0.5, 0.9]).unstack()
            ax.fill_between(q.index, q[0.1], q[0.9], color=_BLUE, alpha=0.15,
                            label=f"10-90% of {len(complete)} complete trials")
            ax.plot(q.index, q[0.5], color=_BLUE, lw=2, label="median of complete trials")
        n_other = len([n for n in shown if n not in ref])
        labels = {"ref": "reference config (paper default)",
                  "other": f"{n_other} complete trials" + (" (random sample)" if n_other < len(rest) else "")}
        for n in shown:
            c = curves[n]
            kind = "ref" if n in ref else "other"
            ax.plot(c[:, 0], c[:, 1], color="#333333" if kind == "ref" else _BLUE,
                    lw=1.6 if kind == "ref" else 0.7, alpha=0.9 if kind == "ref" else 0.35,
                    label=labels.pop(kind, None))
        if len(pruned) <= 15:  # beyond that the x marks alone stay readable
            for n in pruned:
                c = curves[n]
                ax.plot(c[:, 0], c[:, 1], color=_RED, lw=0.7, alpha=0.4)
        if pruned:
            last = np.asarray([curves[n][-1] for n in pruned])
            ax.scatter(last[:, 0], last[:, 1], marker="x", color=_RED, s=28, zorder=4,
                       label=f"pruned here ({len(pruned)} trials)")
        chance = res.chance()
        if chance is not None:
            ax.axhline(chance, color="#777777", lw=0.8, ls="--", label=f"chance ({chance:.3g}%)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("val top-1 (%)")
        ax.set_title("Learning curves (validation accuracy after each epoch)", fontsize=10)
        ax.legend(loc="lower right", fontsize=7)
        return _png(fig)


def history_plot(res: Results) -> Optional[bytes]:
    """Accuracy of each trial in the order it started, the best so far, and where trials were
    pruned (last reported value) or failed (ticks at the bottom)."""
    t = res.trials
    acc = res.accuracy
    if t.empty or acc not in t.columns:
        return None
    done = t[t["state"] == "complete"]
    if done[acc].notna().sum() == 0:
        return None
    with _style():
        fig = _figure(7.5, 4.0)
        ax = fig.add_subplot()
        ax.scatter(done["number"], done[acc], s=10, color=_BLUE, alpha=0.6, label="complete")
        best = done.sort_values("number")[acc].cummax()
        ax.step(done.sort_values("number")["number"], best, where="post", color="#222222", lw=1.3,
                label="best so far")
        pr = t[(t["state"] == "pruned") & t[acc].notna()]
        if len(pr):
            ax.scatter(pr["number"], pr[acc], s=14, marker="x", color=_RED, label="pruned (last value)")
        bottom = ax.get_xaxis_transform()  # x in data, y in axes fraction: ticks along the bottom
        for state, color, y in (("failed", _RED, 0.03), ("running", _ORANGE, 0.07)):
            rows = t[t["state"] == state]
            if len(rows):
                ax.plot(rows["number"], np.full(len(rows), y), "|", color=color, ms=9, alpha=0.8,
                        transform=bottom, label=f"{state} ({len(rows)})")
        ax.set_xlabel("trial number")
        ax.set_ylabel(f"{metric_label(acc)} (%)")
        ax.set_title("Optimization history", fontsize=10)
        ax.legend(loc="lower right", fontsize=7)
        return _png(fig)


def importance_plot(imp: Importance) -> Optional[bytes]:
    """Horizontal bars: importance of each factor per evaluator (normalized to sum 1)."""
    if not imp.values:
        return None
    names = list(imp.values)
    params = list(dict.fromkeys(p for v in imp.values.values() for p in v))
    with _style():
        fig = _figure(7.5, 1.0 + 0.35 * len(params) * max(1, len(names)) ** 0.5)
        ax = fig.add_subplot()
        height = 0.8 / len(names)
        for i, name in enumerate(names):
            vals = [imp.values[name].get(p, 0.0) for p in params]
            ax.barh(np.arange(len(params)) + i * height, vals, height=height, label=name,
                    color=[_BLUE, _ORANGE][i % 2])
        ax.set_yticks(np.arange(len(params)) + height * (len(names) - 1) / 2)
        ax.set_yticklabels([short_name(p) for p in params], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("importance for accuracy (normalized)")
        ax.set_title("Parameter importance", fontsize=10)
        ax.legend(loc="lower right", fontsize=7)
        return _png(fig)
