"""Answers to the ablation questions: effect of each design factor on accuracy, with intervals,
tests corrected for multiple comparisons, and cost deltas, as plain sentences.

* One-factor-at-a-time and named-variant studies (``kind`` ``ofat``/``variants``): each variant
  against the reference (the paper default), paired by seed: the difference per seed, its
  mean, a BCa bootstrap 95% interval (``scipy.stats.bootstrap``) and a paired test
  (``scipy.stats.ttest_rel`` for fewer than 10 pairs, ``scipy.stats.wilcoxon`` from 10 on).
* Joint studies: the marginal effect of each level of each factor against the default level
  (the paper default's, else "the rest"), unpaired over configurations (the seeds of one
  configuration are averaged first, so repeats are not counted as independent samples):
  difference of means, bootstrap interval over both samples, Welch's t-test (Mann-Whitney U
  from 10 configurations per side).

p-values are Holm-corrected over every answerable comparison of the study (Holm, "A simple
sequentially rejective multiple test procedure", Scand. J. Statist. 6, 1979). A comparison is
*too thin to answer* with fewer than ``min_n`` pairs (or trials per side), training shorter than
``min_epochs`` epochs, or both sides' accuracy within ``chance_margin`` points of chance; its
sentence says so and it is left out of the correction.

Parameter importances: Optuna's PED-ANOVA (``PedAnovaImportanceEvaluator``) and fANOVA
(``FanovaImportanceEvaluator``, needs scikit-learn) on joint studies with enough trials.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from analysis.results import (PAPER_DEFAULT, VARIANT, Results, normalize_value, short_name,
                              variant_overrides)

__all__ = ["holm", "Difference", "paired_difference", "unpaired_difference", "Comparison",
           "compare", "comparisons_frame", "factor_summaries", "Importance", "param_importances",
           "metric_label"]

# from this many pairs (or trials per side) on, rank tests replace t-tests
RANK_TEST_FROM = 10


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order; NaN stays NaN and is not counted).

    Example: ``holm([0.01, 0.04, 0.03, 0.005])`` -> ``[0.03, 0.06, 0.06, 0.02]``.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adjusted, 1.0)
    return out


@dataclass
class Difference:
    """``a - b`` with its interval and test.

    Attributes:
        diff: mean difference (paired: mean of per-pair differences).
        lo, hi: bootstrap interval (NaN below 2 observations per side).
        p: two-sided p-value of ``test`` (NaN when it cannot be computed).
        test: name of the test.
        n_a, n_b: observations (pairs: ``n_a == n_b``).
        paired: whether the observations are pairs.
    """
    diff: float
    lo: float
    hi: float
    p: float
    test: str
    n_a: int
    n_b: int
    paired: bool


def _bootstrap(data: Tuple[np.ndarray, ...], statistic, confidence: float, n_resamples: int,
               seed: int) -> Tuple[float, float]:
    from scipy import stats

    lo = hi = math.nan
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ci = stats.bootstrap(data, statistic, n_resamples=n_resamples, vectorized=True,
                                     confidence_level=confidence, method=method,
                                     rng=np.random.default_rng(seed)).confidence_interval
            except (ValueError, FloatingPointError):
                continue
        lo, hi = float(ci.low), float(ci.high)
        if math.isfinite(lo) and math.isfinite(hi):
            break
    return lo, hi


def paired_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                      n_resamples: int = 4999, seed: int = 0) -> Difference:
    """Mean of ``a[i] - b[i]`` over pairs, a BCa bootstrap interval and a paired test
    (t-test below ``RANK_TEST_FROM`` pairs, Wilcoxon signed-rank from there).

    Constant differences get a zero-width interval and p = 0 (or 1 when they are all 0).
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = a - b
    n = len(d)
    test = "paired t-test" if n < RANK_TEST_FROM else "Wilcoxon signed-rank"
    if n == 0:
        return Difference(math.nan, math.nan, math.nan, math.nan, test, 0, 0, True)
    mean = float(d.mean())
    if n < 2:
        return Difference(mean, math.nan, math.nan, math.nan, test, n, n, True)
    if np.ptp(d) <= 1e-12 * max(1.0, abs(mean)):
        return Difference(mean, mean, mean, 0.0 if abs(mean) > 1e-12 else 1.0, test, n, n, True)
    lo, hi = _bootstrap((d,), lambda x, axis: np.mean(x, axis=axis), confidence, n_resamples, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n < RANK_TEST_FROM:
            p = float(stats.ttest_rel(a, b).pvalue)
        else:
            p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return Difference(mean, lo, hi, p, test, n, n, True)


def unpaired_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                        n_resamples: int = 4999, seed: int = 0) -> Difference:
    """``mean(a) - mean(b)`` of independent samples, a bootstrap interval resampling both,
    and Welch's t-test (Mann-Whitney U from ``RANK_TEST_FROM`` per side)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rank = min(len(a), len(b)) >= RANK_TEST_FROM
    test = "Mann-Whitney U" if rank else "Welch t-test"
    if len(a) == 0 or len(b) == 0:
        return Difference(math.nan, math.nan, math.nan, math.nan, test, len(a), len(b), False)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, test, len(a), len(b), False)
    if np.ptp(a) <= 1e-12 and np.ptp(b) <= 1e-12:
        return Difference(diff, diff, diff, 0.0 if abs(diff) > 1e-12 else 1.0, test, len(a), len(b), False)
    lo, hi = _bootstrap((a, b), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                        confidence, n_resamples, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if rank:
            p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
        else:
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return Difference(diff, lo, hi, p, test, len(a), len(b), False)


# -- comparisons --------------------------------------------------------------------------------


@dataclass
class Comparison:
    """One design question: ``factor=level`` against ``factor=reference``.

    Attributes:
        factor: config key (``attention.pool``; ``attention`` for the attention kind).
        level, reference: the compared values (as text).
        metric: the accuracy metric compared (points = percentage points).
        difference: the ``Difference`` (level minus reference).
        p_holm: Holm-adjusted p (NaN when left out of the correction).
        significant: ``p_holm < alpha``.
        thin: why the evidence is too thin to answer ("" when it is not).
        cost: relative cost change in percent per cost column (``madds``, ``params``,
            ``latency_ms``), level vs reference.
        acc_level, acc_reference: mean accuracy of each side.
        config, reference_config: config keys compared (joint studies: None).
        sentence: the answer in one plain sentence.
    """
    factor: str
    level: str
    reference: str
    metric: str
    difference: Difference
    p_holm: float = math.nan
    significant: bool = False
    thin: str = ""
    cost: Dict[str, float] = field(default_factory=dict)
    acc_level: float = math.nan
    acc_reference: float = math.nan
    config: Optional[str] = None
    reference_config: Optional[str] = None
    sentence: str = ""


def metric_label(metric: str) -> str:
    """``val_top1`` -> ``val top-1``."""
    return metric.replace("_top1", " top-1").replace("_top5", " top-5").replace("_", " ")


def _num(x: float, digits: int = 1, sign: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    text = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    if float(text) == 0:
        text = f"{0:+.{digits}f}" if sign else f"{0:.{digits}f}"
    return text.replace("-", "\u2212")


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"={p:.2g}"


def _config_value(doc: Mapping[str, Any], key: str) -> Any:
    node: Any = (doc or {}).get("config") or {}
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, Mapping):
        node = node.get("name")
    return None if node is None else normalize_value(node)


def _reference_level(res: Results, factor: str, ref_rows: pd.DataFrame, ref_ov: Mapping[str, Any],
                     ref_name: str) -> str:
    if factor in ref_ov:
        return str(ref_ov[factor])
    for n in ref_rows["number"]:
        v = _config_value(res.docs.get(int(n), {}), factor)
        if v is not None:
            return str(v)
    if factor in PAPER_DEFAULT:
        return str(PAPER_DEFAULT[factor])
    return ref_name


def _cost_deltas(a: pd.DataFrame, b: pd.DataFrame) -> Dict[str, float]:
    out = {}
    for c in ("madds", "params", "latency_ms"):
        if c in a.columns and c in b.columns:
            x, y = a[c].dropna(), b[c].dropna()
            if len(x) and len(y) and y.mean() != 0:
                out[c] = 100.0 * (x.mean() / y.mean() - 1.0)
    return out


def compare(res: Results, *, metric: Optional[str] = None, alpha: float = 0.05, min_n: int = 3,
            min_epochs: int = 5, chance_margin: float = 5.0, confidence: float = 0.95,
            n_resamples: int = 4999) -> List[Comparison]:
    """Every factor level of the study against the reference, Holm-corrected, with sentences.

    Args:
        res: the loaded sweep.
        metric: accuracy metric (default ``res.accuracy``), in percent.
        alpha: significance level of the Holm-adjusted p-values.
        min_n: fewest pairs (paired) or trials per side (unpaired) to answer.
        min_epochs: fewest epochs of training to answer.
        chance_margin: points above chance below which both sides count as "near chance".
        confidence: level of the bootstrap intervals.
        n_resamples: bootstrap resamples.
    """
    metric = metric or res.accuracy
    done = res.counted()
    done = done[done[metric].notna()] if metric in done.columns else done.iloc[:0]
    comps: List[Tuple[Comparison, pd.DataFrame, pd.DataFrame]] = []
    kw = dict(confidence=confidence, n_resamples=n_resamples)
    if res.kind in ("ofat", "variants") and res.reference is not None:
        variants = variant_overrides(res.trials, res.signature)
        ref_rows = done[done["config"] == res.reference]
        ref_name = str(res.configs.loc[res.configs["config"] == res.reference, "label"].iloc[0]) \
            if (res.configs["config"] == res.reference).any() else str(res.reference)
        ref_ov = variants.get(ref_name, {})
        for key, g in res.trials.groupby("config", sort=False):
            if key == res.reference or not isinstance(g[VARIANT].iloc[0], str):
                continue
            name = str(g[VARIANT].iloc[0])
            ov = variants.get(name, {})
            changed = {k: v for k, v in ov.items() if ref_ov.get(k) != v}
            if len(changed) == 1:
                factor, level = next(iter(changed.items()))
                reference = _reference_level(res, factor, ref_rows, ref_ov, ref_name)
            else:
                factor, level, reference = VARIANT, name, ref_name
            a_rows = done[done["config"] == key]
            seeds = sorted(set(a_rows["seed"].dropna()) & set(ref_rows["seed"].dropna()), key=str)
            a = a_rows.set_index("seed").loc[seeds] if seeds else a_rows.iloc[:0]
            b = ref_rows.set_index("seed").loc[seeds] if seeds else ref_rows.iloc[:0]
            d = paired_difference(a[metric].to_numpy(), b[metric].to_numpy(), **kw)
            c = Comparison(factor=factor, level=str(level), reference=str(reference), metric=metric,
                           difference=d, config=key, reference_config=res.reference,
                           acc_level=float(a[metric].mean()) if len(a) else math.nan,
                           acc_reference=float(b[metric].mean()) if len(b) else math.nan,
                           cost=_cost_deltas(a_rows, ref_rows))
            comps.append((c, a, b))
    elif res.kind == "joint":
        # The unit is the configuration: seeds of one configuration (hydra.sweeper.repeats or a
        # swept seed) are averaged first, so k repeats do not count as k independent samples.
        done = _per_config(done, metric)
        ref_params: Dict[str, Any] = {}
        if res.reference is not None:
            rows = res.trials[res.trials["config"] == res.reference]
            ref_params = {p: rows[p].iloc[0] for p in res.factor_params if p in rows.columns}
        for p in res.factor_params:
            if p == VARIANT or p not in done.columns or not _finite_param(res, p):
                continue
            levels = [v for v in done[p].dropna().unique().tolist()]
            if len(levels) < 2:
                continue
            default = ref_params.get(p)
            if default is None or (isinstance(default, float) and math.isnan(default)):
                default = PAPER_DEFAULT.get(p)
            default = normalize_value(default) if default is not None else None
            if default not in levels:
                default = None
            for level in sorted(levels, key=lambda v: (str(type(v)), v)):
                if level == default:
                    continue
                a = done[done[p] == level]
                b = done[done[p] == default] if default is not None else done[done[p].notna() & (done[p] != level)]
                d = unpaired_difference(a[metric].to_numpy(), b[metric].to_numpy(), **kw)
                c = Comparison(factor=p, level=str(level),
                               reference=str(default) if default is not None else "the rest",
                               metric=metric, difference=d,
                               acc_level=float(a[metric].mean()), acc_reference=float(b[metric].mean()),
                               cost=_cost_deltas(a, b))
                comps.append((c, a, b))
    chance = res.chance()
    for c, a, b in comps:
        c.thin = _thin(c, a, b, min_n, min_epochs, chance, chance_margin)
    family = [c for c, _, _ in comps if not c.thin and math.isfinite(c.difference.p)]
    for c, adj in zip(family, holm([c.difference.p for c in family])):
        c.p_holm = float(adj)
        c.significant = bool(adj < alpha)
    out = [c for c, _, _ in comps]
    for c in out:
        c.sentence = _sentence(c)
    return out


def _finite_param(res: Results, p: str) -> bool:
    dist = None
    if res.study is not None:
        for t in res.study.get_trials(deepcopy=False):
            if p in t.distributions:
                dist = t.distributions[p]
                break
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if dist is None:
        return True
    if isinstance(dist, CategoricalDistribution):
        return True
    return isinstance(dist, IntDistribution) and (dist.high - dist.low) // dist.step < 16


def _per_config(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per configuration: ``metric`` averaged over its seeds, other columns from its first row."""
    if rows.empty or not rows["config"].duplicated().any():
        return rows
    agg = {c: "first" for c in rows.columns if c not in ("config", metric)}
    agg[metric] = "mean"
    return rows.groupby("config", sort=False).agg(agg).reset_index()


def _thin(c: Comparison, a: pd.DataFrame, b: pd.DataFrame, min_n: int, min_epochs: int,
          chance: Optional[float], margin: float) -> str:
    """Every reason the evidence is too thin to answer ("; "-joined), or ""."""
    d = c.difference
    reasons = []
    if d.paired and d.n_a < min_n:
        reasons.append(f"only {d.n_a} paired seed{'s' if d.n_a != 1 else ''}, need \u2265 {min_n}")
    if not d.paired and min(d.n_a, d.n_b) < min_n:
        reasons.append(f"only {d.n_a} vs {d.n_b} configs, need \u2265 {min_n} per side")
    epochs = pd.concat([a["epochs_run"], b["epochs_run"]]).dropna()
    if len(epochs) and epochs.min() < min_epochs:
        reasons.append(f"trained only {int(epochs.min())} epoch{'s' if epochs.min() != 1 else ''}, "
                       f"need \u2265 {min_epochs}")
    if chance is not None and max(c.acc_level, c.acc_reference) < chance + margin:
        reasons.append(f"accuracy near chance: {_num(max(c.acc_level, c.acc_reference), sign=False)}% "
                       f"vs chance {_num(chance, sign=False)}%")
    return "; ".join(reasons)


def _sentence(c: Comparison) -> str:
    d = c.difference
    name = short_name(c.factor)
    head = f"{name}={c.level} vs {c.reference}" if c.factor != VARIANT else f"{c.level} vs {c.reference}"
    interval = f" [{_num(d.lo)}, {_num(d.hi)}]" if math.isfinite(d.lo) else ""
    n = f"n={d.n_a} pairs" if d.paired else f"n={d.n_a} vs {d.n_b} configs, unpaired"
    effect = f"{_num(d.diff)} pts {metric_label(c.metric)}{interval}"
    if c.thin:
        p = f"p{_p(d.p)} unadjusted" if math.isfinite(d.p) else ""
        detail = ", ".join(x for x in (n if not c.thin.startswith("only") else "", p) if x)
        verdict = f"too thin to answer: {c.thin}" + (f" ({detail})" if detail else "")
    elif not math.isfinite(c.p_holm):
        verdict = f"no test possible ({n})"
    elif c.significant:
        verdict = (f"significantly {'better' if d.diff > 0 else 'worse'} "
                   f"({n}, {d.test}, Holm p{_p(c.p_holm)})")
    else:
        verdict = f"not significant ({n}, {d.test}, Holm p{_p(c.p_holm)})"
    costs = []
    for col, label, digits in (("madds", "madds", 1), ("params", "params", 1), ("latency_ms", "latency", 0)):
        if col in c.cost and math.isfinite(c.cost[col]):
            costs.append(f"{_num(c.cost[col], digits)}% {label}")
    return f"{head}: {effect}, {verdict}" + (f"; {', '.join(costs)}" if costs else "") + "."


def comparisons_frame(comps: Sequence[Comparison]) -> pd.DataFrame:
    """One row per comparison (for tables and CSV)."""
    rows = []
    for c in comps:
        d = c.difference
        rows.append({
            "factor": c.factor, "level": c.level, "reference": c.reference, "metric": c.metric,
            "diff": d.diff, "ci_lo": d.lo, "ci_hi": d.hi, "n": d.n_a, "n_reference": d.n_b,
            "paired": d.paired, "test": d.test, "p": d.p, "p_holm": c.p_holm,
            "significant": c.significant, "thin": c.thin or None,
            "acc_level": c.acc_level, "acc_reference": c.acc_reference,
            "d_madds_pct": c.cost.get("madds", math.nan), "d_params_pct": c.cost.get("params", math.nan),
            "d_latency_pct": c.cost.get("latency_ms", math.nan), "sentence": c.sentence,
        })
    return pd.DataFrame(rows)


def factor_summaries(comps: Sequence[Comparison]) -> Dict[str, str]:
    """One plain sentence per factor, summarizing its comparisons."""
    out: Dict[str, str] = {}
    by: Dict[str, List[Comparison]] = {}
    for c in comps:
        by.setdefault(c.factor, []).append(c)
    for factor, cs in by.items():
        name = short_name(factor)
        ref = cs[0].reference
        sig = [c for c in cs if c.significant]
        thin = [c for c in cs if c.thin]
        tested = [c for c in cs if not c.thin and math.isfinite(c.p_holm)]
        if sig:
            parts = [f"{c.level} is {'better' if c.difference.diff > 0 else 'worse'} than {ref} "
                     f"({_num(c.difference.diff)} pts, Holm p{_p(c.p_holm)})" for c in sig]
            rest = len(cs) - len(sig)
            text = f"{name}: " + "; ".join(parts) + (f"; {rest} other level{'s' if rest != 1 else ''} "
                                                      f"not shown to differ" if rest else "")
        elif tested:
            best = min(c.p_holm for c in tested)
            text = (f"{name}: no level differs significantly from {ref} "
                    f"({len(tested)} tested, smallest Holm p{_p(best)})")
            if thin:
                text += f"; {len(thin)} too thin to answer"
        else:
            text = f"{name}: too thin to answer ({thin[0].thin if thin else 'no comparison possible'})"
        out[factor] = text + "."
    return out


# -- importance ---------------------------------------------------------------------------------


@dataclass
class Importance:
    """Optuna parameter importances (evaluator name -> {param: importance}), or why not."""
    values: Dict[str, Dict[str, float]] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)


def param_importances(res: Results, *, min_trials: int = 20, seed: int = 0) -> Importance:
    """PED-ANOVA and fANOVA importances of the factors for the accuracy objective.

    Only for joint studies (OFAT varies one factor at a time: importance is not defined there)
    with at least ``min_trials`` complete trials and two or more factors.
    """
    import optuna
    from optuna.importance import (FanovaImportanceEvaluator, PedAnovaImportanceEvaluator,
                                   get_param_importances)

    out = Importance()
    names = ("PED-ANOVA", "fANOVA")
    params = [p for p in res.factor_params if p != VARIANT]
    n = int((res.trials["state"] == "complete").sum())
    reason = None
    if res.study is None:
        reason = "the study is not loaded"
    elif res.kind != "joint":
        reason = (f"a {res.kind} study varies one named config at a time; compare variants "
                  f"instead (importance needs factors sampled jointly)")
    elif len(params) < 2:
        reason = f"{len(params)} factor(s) swept; importance needs at least 2"
    elif n < min_trials:
        reason = f"only {n} complete trials (need \u2265 {min_trials})"
    if reason:
        return Importance(skipped={k: reason for k in names})
    idx = res.objectives.index(res.accuracy) if res.accuracy in res.objectives else 0
    sign = -1.0 if res.directions[idx] == "maximize" else 1.0
    complete = res.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    everywhere = [p for p in params if all(p in t.params for t in complete)]
    evaluators = {
        # PED-ANOVA assumes minimization; >= 5 trials in the top quantile (Optuna's advice)
        "PED-ANOVA": (PedAnovaImportanceEvaluator(target_quantile=min(0.5, max(0.1, 5.0 / n))),
                      lambda t: sign * t.values[idx], params),
        "fANOVA": (None, lambda t: t.values[idx], everywhere),
    }
    try:
        import sklearn  # noqa: F401
        evaluators["fANOVA"] = (FanovaImportanceEvaluator(seed=seed), evaluators["fANOVA"][1], everywhere)
    except ImportError:
        out.skipped["fANOVA"] = "scikit-learn is not installed (fANOVA fits random forests)"
        evaluators.pop("fANOVA")
    for name, (ev, target, ps) in evaluators.items():
        if len(ps) < 2:
            out.skipped[name] = "fewer than 2 factors present in every complete trial"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.values[name] = {k: float(v) for k, v in get_param_importances(
                    res.study, evaluator=ev, params=ps, target=target).items()}
        except Exception as e:  # an evaluator's own limits (e.g. too few distinct values)
            out.skipped[name] = f"{type(e).__name__}: {e}"
    return out
