"""A sweep as tables: one row per trial and one per configuration (seeds aggregated).

Reads only the storage and the trials' files (``<run_dir>/metrics.json`` written by
``sweep.trial``); it never imports the runner. Sources accepted by ``load_results``:

* a sweep directory holding ``optuna.db`` (what the coordsweep sweeper writes by default) or
  one Optuna journal file (``*.log``);
* an SQLite file (``*.db``, ``*.sqlite``) or an Optuna journal file;
* a storage URL: ``sqlite:///path.db``, ``postgresql://user:pw@host/db``, ``journal:///path.log``.

A *configuration* is a trial's parameters minus ``seed`` (equivalently its ``overrides`` minus
``seed=...``); trials of one configuration with different seeds are repeats. Trials that
copy another trial's result (``reused_from``) and second completions of the same
(configuration, seed) are listed but not counted as repeats (``counted`` is False). A trial of
a sweep with ``hydra.sweeper.repeats`` ran every seed itself: it becomes one row per seed (user
attr ``seed_metrics``), all with the trial's number.

Example::

    from analysis.results import load_results
    res = load_results("multirun/ca_ofat")
    res.trials[["number", "state", "config", "seed", "val_top1", "madds"]]
    res.configs[["config", "n_seeds", "val_top1_mean", "val_top1_lo", "val_top1_hi"]]
    res.export("multirun/ca_ofat/report")   # trials.csv, configs.csv, *.parquet
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

__all__ = ["Results", "load_results", "open_source", "mask_url", "t_interval", "STATES",
           "COST_COLUMNS", "PAPER_DEFAULT", "SEED", "VARIANT", "normalize_value", "short_name"]

SEED = "seed"
VARIANT = "variant"
# Optuna state -> report state
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
          "WAITING": "waiting"}
# cost in every convention (analysis/cost.py) and measured latency, as trial metrics
COST_COLUMNS = ("madds", "fvcore_flops", "full_flops", "params", "attn_params", "latency_ms",
                "latency_ms_b1", "latency_ms_b32")
ACCURACY_COLUMNS = ("val_top1", "val_top5", "best_val_top1", "test_top1", "test_top5")
# The CA paper's MobileNetV2 configuration (Hou et al., CVPR 2021; conf/attention/ca.yaml), in the
# form Optuna stores params (lists as override text): the reference level of a joint study when
# no trial was enqueued as the paper default.
PAPER_DEFAULT: Dict[str, Any] = {
    "attention": "ca", "attention.reduction": 32, "attention.pool": "avg",
    "attention.act": "h_swish", "attention.gate": "sigmoid", "attention.directions": "hw",
    "attention.norm": "bn", "attention.position": "post_dw",
    "attention.stages": "[1,2,3,4,5,6,7]",
}
_SIGNATURE = "coordsweep:signature"
_SKIPPED = "coordsweep:skipped"
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def mask_url(url: Optional[str]) -> str:
    """A storage URL safe to print (``postgresql://user:***@host/db``); see ``sweep.storage``."""
    from sweep.storage import mask_url as _mask

    return _mask(url)


def _mask_text(text: str, url: Optional[str]) -> str:
    from sweep.storage import mask_text, secrets_of

    return mask_text(text, secrets_of(url))


def normalize_value(value: Any) -> Any:
    """A param value in a comparable form: lists as compact override text (``[1,2]``), ints
    for integral floats, strings unchanged."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(normalize_value(v)) for v in value) + "]"
    if isinstance(value, str):
        return value.replace(" ", "") if value.startswith("[") else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def short_name(key: str) -> str:
    """``attention.pool`` -> ``pool`` (the attention group is implied in a CA report)."""
    return key[len("attention."):] if key.startswith("attention.") else key


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float, float, float]:
    """Mean, sample sd and the two-sided Student-t interval of the mean.

    Returns (mean, sd, lo, hi); sd/lo/hi are NaN for fewer than 2 values.

    Example: ``t_interval([1, 2, 3])`` -> ``(2.0, 1.0, -0.484..., 4.484...)``.
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return mean, sd, mean - half, mean + half


# -- opening a source ---------------------------------------------------------------------------


@dataclass
class Source:
    """Where a study lives: the storage URL (unmasked, never print it), the sweep directory
    (run dirs ``<sweep_dir>/<trial number>``) when known."""
    url: str
    sweep_dir: Optional[Path]

    @property
    def shown(self) -> str:
        return mask_url(self.url)


def _is_journal_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1)
    except OSError:
        return False
    return head in (b"{", b"")


def open_source(source: str | os.PathLike) -> Source:
    """Resolve a sweep directory, database/journal file or storage URL into a ``Source``.

    Raises:
        FileNotFoundError: a path that does not exist or a directory without a study.
        ValueError: an unusable URL (the password is masked in the message).
    """
    text = str(source)
    if "://" in text or text.startswith("journal:"):
        from sweep.storage import resolve_storage

        try:
            url = resolve_storage(text, os.getcwd())
        except ValueError as e:
            raise ValueError(str(e)) from None
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            if not path.exists():
                raise FileNotFoundError(f"no SQLite database at {path}")
            return Source(url, path.parent)
        if url.startswith("journal:///"):
            path = Path("/" + url[len("journal:///"):])
            if not path.exists():
                raise FileNotFoundError(f"no journal file at {path}")
            return Source(url, path.parent)
        return Source(url, None)
    path = Path(text).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{text}: no such sweep directory, database or journal file")
    if path.is_dir():
        db = path / "optuna.db"
        if db.exists():
            return Source("sqlite:///" + str(db), path)
        journals = sorted(p for p in path.glob("*.log") if _is_journal_file(p) and p.stat().st_size)
        if len(journals) == 1:
            return Source("journal:///" + str(journals[0]).lstrip("/"), path)
        raise FileNotFoundError(
            f"{path} holds no optuna.db" + (f" and {len(journals)} journal files" if journals else "")
            + "; pass the storage URL (sqlite:///..., postgresql://..., journal:///...) or the file")
    if path.suffix in _SQLITE_SUFFIXES:
        return Source("sqlite:///" + str(path), path.parent)
    if _is_journal_file(path):
        return Source("journal:///" + str(path).lstrip("/"), path.parent)
    raise ValueError(f"{path}: neither an SQLite database ({', '.join(_SQLITE_SUFFIXES)}) nor an "
                     f"Optuna journal file")


def _storage(src: Source):
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if src.url.startswith("journal:///"):
                from optuna.storages.journal import JournalFileBackend, JournalStorage

                return JournalStorage(JournalFileBackend("/" + src.url[len("journal:///"):]))
            return optuna.storages.RDBStorage(src.url)
    except Exception as e:
        raise ValueError(f"cannot open the storage {src.shown}: "
                         f"{_mask_text(type(e).__name__ + ': ' + str(e), src.url)}") from None


def _load_study(src: Source, study_name: Optional[str]):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(src)
    names = [s.study_name for s in storage.get_all_studies()]
    if study_name is None:
        if len(names) != 1:
            raise ValueError(f"{src.shown} holds {len(names)} studies"
                             + (f" ({', '.join(sorted(names))}); choose one with --study NAME"
                                if names else ""))
        study_name = names[0]
    elif study_name not in names:
        raise ValueError(f"no study {study_name!r} in {src.shown}; studies there: "
                         f"{', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=study_name, storage=storage)


# -- results ------------------------------------------------------------------------------------


@dataclass
class Results:
    """A loaded sweep.

    Attributes:
        study_name: the Optuna study.
        storage: the storage URL with its password masked.
        sweep_dir: the sweep directory when known (trial run dirs, default report location).
        objectives: objective metric names in Optuna's order (``value_<i>`` when unknown).
        directions: ``maximize``/``minimize`` per objective.
        accuracy: the accuracy metric the analysis compares (the first maximized objective
            that is an accuracy, else ``val_top1``).
        kind: ``ofat`` (variants = a base + one factor changed each), ``variants`` (named
            configs, e.g. the baselines), ``joint`` (factors sampled together), ``single``.
        params: Optuna param names (``seed`` and ``variant`` included when swept).
        trials: one row per trial (see ``load_results``).
        configs: one row per configuration, seeds aggregated.
        reference: config key of the reference configuration (the paper default), or None.
        docs: trial number -> parsed ``metrics.json`` (only for trials that have one).
        signature: the sweep's signature (search space, variants, objectives) when stored.
        study: the ``optuna.Study`` (for importances and plots).
    """

    study_name: str
    storage: str
    sweep_dir: Optional[Path]
    objectives: List[str]
    directions: List[str]
    accuracy: str
    kind: str
    params: List[str]
    trials: pd.DataFrame
    configs: pd.DataFrame
    reference: Optional[str]
    docs: Dict[int, dict] = field(default_factory=dict, repr=False)
    signature: Dict[str, Any] = field(default_factory=dict, repr=False)
    study: Any = field(default=None, repr=False)

    @property
    def factor_params(self) -> List[str]:
        """Swept params that define configurations (not ``seed``)."""
        return [p for p in self.params if p != SEED]

    def counts(self) -> Dict[str, int]:
        """Trials by state (``complete``, ``pruned``, ``failed``, ``running``, ``waiting``)."""
        return {s: int(n) for s, n in self.trials["state"].value_counts().items()}

    def chance(self) -> Optional[float]:
        """Chance-level accuracy in percent (100 / classes) when the data are described."""
        for doc in self.docs.values():
            n = (doc.get("data") or {}).get("num_classes")
            if n:
                return 100.0 / float(n)
        return None

    def counted(self, states: Sequence[str] = ("complete",)) -> pd.DataFrame:
        """Trials in ``states`` that count as independent repeats."""
        t = self.trials
        return t[t["state"].isin(list(states)) & t["counted"]]

    def export(self, out_dir: str | os.PathLike) -> Dict[str, Path]:
        """Write ``trials.csv``, ``configs.csv``, ``trials.parquet`` and ``configs.parquet``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, df in (("trials", self.trials), ("configs", self.configs)):
            flat = _flat(df)
            paths[f"{name}_csv"] = out / f"{name}.csv"
            flat.to_csv(paths[f"{name}_csv"], index=False)
            paths[f"{name}_parquet"] = out / f"{name}.parquet"
            flat.to_parquet(paths[f"{name}_parquet"], index=False)
        return paths


def _flat(df: pd.DataFrame) -> pd.DataFrame:
    """Columns of mixed Python types (e.g. a param with ints and strings) as text, so parquet
    and CSV round-trip."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            kinds = {type(v) for v in out[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 or kinds & {list, dict, tuple}:
                out[c] = [None if v is None or (isinstance(v, float) and math.isnan(v))
                          else (json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v))
                          for v in out[c]]
    return out


def _read_doc(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _config_key(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={normalize_value(v)}" for k, v in sorted(params.items()) if k != SEED)


def _objective_names(study, signature: Mapping[str, Any]) -> List[str]:
    names = list((signature.get("objectives") or {}).keys())
    if len(names) == len(study.directions):
        return names
    names = study.metric_names if getattr(study, "metric_names", None) else None
    return list(names) if names else [f"value_{i}" for i in range(len(study.directions))]


def _accuracy_metric(objectives: Sequence[str], directions: Sequence[str], columns) -> str:
    for name, d in zip(objectives, directions):
        if d == "maximize" and ("top1" in name or "acc" in name) and name in columns:
            return name
    for name, d in zip(objectives, directions):
        if d == "maximize" and name in columns:
            return name
    return "val_top1"


def load_results(source: str | os.PathLike, study_name: Optional[str] = None) -> Results:
    """Load a study and its trials' ``metrics.json`` into tables.

    Args:
        source: sweep directory, SQLite/journal file, or storage URL (see the module doc).
        study_name: the study; may be omitted when the storage holds exactly one.

    Returns:
        ``Results``; ``trials`` has one row per trial: ``number``, ``state`` (complete,
        pruned, failed, running, waiting), ``fail_reason``, ``config`` (key), ``config_id``
        (lowest trial number of the config), ``label``, ``seed``, ``counted``, every Optuna
        param as a column, every metric (accuracy, ``epochs_run``, cost in each convention:
        ``madds``, ``fvcore_flops``, ``full_flops``, ``params``, ``latency_ms``...),
        ``value_<objective>``, ``reused_from``, ``retried``, ``skipped``, ``run_dir``,
        ``datetime_start``, ``datetime_complete``, ``duration_s``, ``overrides``.
    """
    from optuna.trial import TrialState

    src = open_source(source)
    study = _load_study(src, study_name)
    signature = dict(study.user_attrs.get(_SIGNATURE) or {})
    frozen = study.get_trials(deepcopy=False)
    directions = [d.name.lower() for d in study.directions]
    objectives = _objective_names(study, signature)
    retried = {n for t in frozen for n in t.system_attrs.get("retry_history", [])}

    rows: List[dict] = []
    docs: Dict[int, dict] = {}
    params_seen: Dict[str, None] = {}
    for t in frozen:
        params = dict(t.params)
        if not params and t.state == TrialState.WAITING:
            params = dict(t.system_attrs.get("fixed_params") or {})
        for p in params:
            params_seen.setdefault(p, None)
        ua = t.user_attrs
        run_dir = ua.get("run_dir")
        doc = None
        candidates = [Path(run_dir)] if run_dir else []
        if src.sweep_dir is not None:
            candidates.append(src.sweep_dir / str(t.number))
        for d in candidates:
            if (d / "metrics.json").exists():
                doc = _read_doc(d / "metrics.json")
                if doc is not None:
                    run_dir = str(d)
                    break
        else:
            if len(candidates) == 2 and not candidates[0].exists() and candidates[1].is_dir():
                run_dir = str(candidates[1])  # the sweep dir was moved
        if doc is not None:
            docs[t.number] = doc
        metrics = dict((doc or {}).get("metrics") or {})
        for k, v in ua.items():
            if k not in ("overrides", "run_dir", "fail_reason", "enqueued_as", "reused_from",
                         "variant") and (v is None or isinstance(v, (bool, int, float, str))):
                metrics.setdefault(k, v)
        overrides = ua.get("overrides")
        seed = params.get(SEED, metrics.get(SEED))
        if seed is None and doc is not None:
            seed = (doc.get("config") or {}).get(SEED)
        row: Dict[str, Any] = {
            "number": t.number,
            "state": STATES.get(t.state.name, t.state.name.lower()),
            "fail_reason": _mask_text(str(ua["fail_reason"]), src.url) if ua.get("fail_reason") else None,
            "config": _config_key(params),
            "seed": seed,
            "variant": params.get(VARIANT, ua.get("variant")),
            "enqueued_as": ua.get("enqueued_as"),
            "reused_from": ua.get("reused_from"),
            "retried": t.number in retried,
            "skipped": _SKIPPED in t.system_attrs,
            "run_dir": run_dir,
            "overrides": " ".join(o for o in overrides if not o.startswith(f"{SEED}="))
            if isinstance(overrides, list) else None,
            "datetime_start": t.datetime_start,
            "datetime_complete": t.datetime_complete,
            "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_start and t.datetime_complete else math.nan,
            "last_step": max(t.intermediate_values) if t.intermediate_values else None,
        }
        for name, value in zip(objectives, t.values or []):
            row[f"value_{name}"] = value
        for p, v in params.items():
            row[p] = normalize_value(v)
        for k, v in metrics.items():
            if k not in row and k not in params:
                row[k] = v
        per_seed = ua.get("seed_metrics")
        if isinstance(per_seed, list) and per_seed and all(isinstance(m, dict) for m in per_seed):
            # hydra.sweeper.repeats: one trial ran every seed; one row per seed (its own metrics)
            for m in per_seed:
                seed_row = dict(row)
                seed_row.update({k: v for k, v in m.items() if k not in params})
                seed_row["seed"] = m.get(SEED, m.get("seed"))
                rows.append(seed_row)
            continue
        rows.append(row)

    trials = pd.DataFrame(rows)
    if trials.empty:
        trials = pd.DataFrame(columns=["number", "state", "fail_reason", "config", "seed", "variant",
                                       "reused_from", "retried", "skipped", "run_dir", "overrides"])
    for c in ACCURACY_COLUMNS + COST_COLUMNS + ("epochs_run",):
        if c not in trials.columns:
            trials[c] = math.nan
        trials[c] = pd.to_numeric(trials[c], errors="coerce")
    seeds = pd.to_numeric(trials["seed"], errors="coerce")
    if seeds.notna().sum() == trials["seed"].notna().sum() and (seeds.dropna() % 1 == 0).all():
        trials["seed"] = seeds.astype("Int64")
    params = list(params_seen)
    accuracy = _accuracy_metric(objectives, directions, trials.columns)
    _mark_counted(trials)
    kind, reference = _design(trials, params, signature)
    _label(trials, kind, reference)
    configs = _aggregate(trials, params, accuracy, reference)
    trials = _order(trials, params, objectives, accuracy)
    return Results(study_name=study.study_name, storage=src.shown, sweep_dir=src.sweep_dir,
                   objectives=objectives, directions=directions, accuracy=accuracy, kind=kind,
                   params=params, trials=trials, configs=configs, reference=reference, docs=docs,
                   signature=signature, study=study)


def _mark_counted(trials: pd.DataFrame) -> None:
    """``counted``: an independent repeat (not a copy, not a second (config, seed) completion);
    ``config_id``: the lowest trial number of the configuration."""
    if trials.empty:
        trials["counted"] = pd.Series(dtype=bool)
        trials["config_id"] = pd.Series(dtype=int)
        return
    t = trials.sort_values("number")
    original = t["reused_from"].isna()
    complete = (t["state"] == "complete") & original
    repeat = t.loc[complete, ["config", "seed"]].astype(str).duplicated()
    counted = original.copy()
    counted[repeat[repeat].index] = False
    trials["counted"] = counted.reindex(trials.index).astype(bool)
    trials["config_id"] = trials.groupby("config")["number"].transform("min").astype(int)


def _override_map(overrides: Sequence[str]) -> Dict[str, str]:
    out = {}
    for o in overrides:
        k, _, v = str(o).partition("=")
        out[k.lstrip("+~")] = normalize_value(v)
    return out


def variant_overrides(trials: pd.DataFrame, signature: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Variant name -> {key: value} it sets, from the stored signature or the trials' overrides."""
    out: Dict[str, Dict[str, Any]] = {}
    for name, ovs in (signature.get("variants") or {}).items():
        out[str(name)] = _override_map(ovs)
    if VARIANT in trials.columns:
        for name, ovs in trials.dropna(subset=[VARIANT])[[VARIANT, "overrides"]].itertuples(index=False):
            if name not in out and isinstance(ovs, str):
                out[name] = _override_map([o for o in ovs.split(" ") if o])
    return out


def _design(trials: pd.DataFrame, params: List[str], signature: Mapping[str, Any]) -> Tuple[str, Optional[str]]:
    """(kind, reference config key)."""
    factors = [p for p in params if p != SEED]
    if not factors:
        return "single", None
    configs = trials["config"].tolist()
    if VARIANT in factors and len(factors) == 1:
        variants = variant_overrides(trials, signature)
        names = [n for n in variants] or sorted(set(trials[VARIANT].dropna()))
        base = _base_variant(variants)
        kind = "ofat" if base is not None else "variants"
        ref = base
        if ref is None:
            for pick in ("paper_default", "default", "ca"):
                if pick in names:
                    ref = pick
                    break
        if ref is None and names:
            ref = names[0]
        return kind, (_config_key({VARIANT: ref}) if ref is not None else None)
    enq = trials.dropna(subset=["enqueued_as"]) if "enqueued_as" in trials.columns else trials.iloc[:0]
    for name in ("paper_default", None):
        rows = enq if name is None else enq[enq["enqueued_as"] == name]
        if len(rows):
            return "joint", str(rows.sort_values("number")["config"].iloc[0])
    default = _config_key({p: PAPER_DEFAULT[p] for p in factors if p in PAPER_DEFAULT})
    if len(default) and all(p in PAPER_DEFAULT for p in factors) and default in configs:
        return "joint", default
    return "joint", None


def _base_variant(variants: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """The variant every other one extends by exactly one changed key (an OFAT base)."""
    if len(variants) < 2:
        return None
    candidates = []
    for name, base in variants.items():
        ok = True
        for other, ov in variants.items():
            if other == name:
                continue
            if any(ov.get(k) != v for k, v in base.items() if k in ov) or \
                    any(k not in ov for k in base):
                ok = False
                break
            changed = [k for k in ov if ov[k] != base.get(k)]
            if len(changed) != 1 or changed[0] in base:
                ok = False
                break
        if ok:
            candidates.append(name)
    if "paper_default" in candidates:
        return "paper_default"
    return candidates[0] if candidates else None


def _label(trials: pd.DataFrame, kind: str, reference: Optional[str]) -> None:
    """A short readable name per configuration: the variant name, or its overrides."""
    if trials.empty:
        trials["label"] = pd.Series(dtype=object)
        return
    t = trials.sort_values("number")
    first = t.drop_duplicates("config").set_index("config")
    overrides = t.dropna(subset=["overrides"]).drop_duplicates("config").set_index("config")["overrides"]
    labels = {}
    for key in first.index:
        variant = first.at[key, VARIANT] if VARIANT in first.columns else None
        if kind in ("ofat", "variants") and isinstance(variant, str):
            labels[key] = variant
        else:
            text = overrides.get(key, key)
            labels[key] = " ".join(short_name(o) for o in str(text).split(" ") if o) or "(no params)"
    trials["label"] = trials["config"].map(labels)


def _aggregate(trials: pd.DataFrame, params: List[str], accuracy: str,
               reference: Optional[str]) -> pd.DataFrame:
    """One row per configuration: counts by state, seeds, accuracy mean/sd (and the 95%
    t-interval of ``accuracy``) over counted complete trials, mean cost."""
    from scipy import stats

    if trials.empty:
        return pd.DataFrame(columns=["config_id", "config", "label", "is_reference", "n_trials",
                                     "n_complete", "n_seeds", f"{accuracy}_mean", f"{accuracy}_lo",
                                     f"{accuracy}_hi", *COST_COLUMNS])
    t = trials.sort_values("number")
    first = t.drop_duplicates("config").set_index("config")
    out = pd.DataFrame(index=first.index)
    out["config_id"] = first["config_id"].astype(int)
    out["label"] = first["label"]
    out["is_reference"] = out.index == reference
    states = pd.crosstab(t["config"], t["state"])
    out["n_trials"] = t.groupby("config").size()
    for s in ("complete", "pruned", "failed", "running"):
        out[f"n_{s}"] = states[s] if s in states.columns else 0
    done = t[(t["state"] == "complete") & t["counted"]]
    g = done.groupby("config")
    out["n_seeds"] = g.size().reindex(out.index).fillna(0).astype(int)
    seeds = {k: " ".join(str(v) for v in sorted(x.dropna().unique().tolist(), key=str))
             for k, x in g["seed"]}
    out["seeds"] = [seeds.get(k, "") for k in out.index]
    for p in params:
        if p != SEED and p in first.columns:
            out[p] = first[p]
    for c in dict.fromkeys((accuracy,) + ACCURACY_COLUMNS):
        if c not in done.columns:
            continue
        vals = pd.to_numeric(done[c], errors="coerce")
        mean = vals.groupby(done["config"]).mean().reindex(out.index)
        sd = vals.groupby(done["config"]).std(ddof=1).reindex(out.index)
        out[f"{c}_mean"], out[f"{c}_sd"] = mean, sd
        if c == accuracy:
            n = vals.groupby(done["config"]).count().reindex(out.index).fillna(0).to_numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                q = np.where(n >= 2, stats.t.ppf(0.975, np.maximum(n - 1, 1)), np.nan)
                half = q * sd.to_numpy() / np.sqrt(np.maximum(n, 1))
            # accuracies are percentages: a t-interval from 2-3 seeds can leave [0, 100]; clip it
            out[f"{c}_lo"], out[f"{c}_hi"] = (mean - half).clip(lower=0.0), (mean + half).clip(upper=100.0)
    for c in COST_COLUMNS:
        if c in t.columns:
            ran = pd.to_numeric(done[c], errors="coerce").groupby(done["config"]).mean()
            anyrun = pd.to_numeric(t[c], errors="coerce").groupby(t["config"]).mean()
            out[c] = ran.reindex(out.index).combine_first(anyrun.reindex(out.index))
    out["epochs_run_min"] = done.groupby("config")["epochs_run"].min().reindex(out.index)
    out["epochs_run_max"] = t.groupby("config")["epochs_run"].max().reindex(out.index)
    return out.reset_index().sort_values("config_id").reset_index(drop=True)


def _order(trials: pd.DataFrame, params: List[str], objectives: Sequence[str], accuracy: str) -> pd.DataFrame:
    first = ["number", "state", "fail_reason", "config_id", "label", "seed", "counted",
             *[p for p in params if p != SEED], "epochs_run",
             *dict.fromkeys((accuracy,) + ACCURACY_COLUMNS), *COST_COLUMNS,
             *[f"value_{o}" for o in objectives]]
    first = [c for c in dict.fromkeys(first) if c in trials.columns]
    tail = ["config", "overrides", "reused_from", "retried", "skipped", "enqueued_as", "run_dir",
            "datetime_start", "datetime_complete", "duration_s", "last_step"]
    tail = [c for c in tail if c in trials.columns and c not in first]
    rest = [c for c in trials.columns if c not in first and c not in tail]
    return trials[first + rest + tail].sort_values("number").reset_index(drop=True)
