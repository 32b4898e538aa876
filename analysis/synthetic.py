"""Synthetic sweeps with known answers, written like the coordsweep sweeper writes real ones:
an Optuna study (``optuna.trial.create_trial`` + ``study.add_trials``) in ``<dir>/optuna.db``
and a ``metrics.json`` per trial in ``<dir>/<trial number>/``.

For tests, benchmarks and demos of the reports; nothing is trained. Accuracy is a base value
plus the true effect of the config (``effects``), a per-seed offset shared by every config
(so pairing by seed removes it) and small per-trial noise; cost follows a rough MobileNetV2
(CIFAR geometry) model with the attention's share scaled by its factors.

Example::

    from analysis.synthetic import ofat_study
    ofat_study("/tmp/ofat", effects={"attention.pool=max": 3.0}, seeds=range(5))
    # python -m analysis.report /tmp/ofat
"""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["OFAT_FACTORS", "JOINT_SPACE", "TrialSpec", "write_study", "ofat_study",
           "baselines_study", "joint_study", "synthetic_cost"]

# conf/search_space/ca_ofat.yaml and ca_joint.yaml (values as Optuna stores them)
OFAT_FACTORS: Dict[str, List[Any]] = {
    "attention.reduction": [8, 16, 64],
    "attention.pool": ["max", "avgmax", "gem"],
    "attention.act": ["relu6", "swish", "relu"],
    "attention.gate": ["h_sigmoid", "softmax_hw"],
    "attention.directions": ["h", "w"],
    "attention.position": ["post_expand", "post_project", "post_add"],
    "attention.stages": ["[2,3,4]", "[5,6,7]"],
}
JOINT_SPACE: Dict[str, List[Any]] = {
    "attention.reduction": [8, 16, 32, 64],
    "attention.pool": ["avg", "max", "avgmax", "gem"],
    "attention.act": ["h_swish", "swish", "relu", "relu6"],
    "attention.gate": ["sigmoid", "h_sigmoid", "softmax_hw"],
    "attention.directions": ["hw", "h", "w"],
    "attention.norm": ["bn", "gn", "none"],
    "attention.position": ["post_expand", "post_dw", "post_project", "post_add"],
    "attention.stages": ["[1,2,3,4,5,6,7]", "[2,3,4]", "[5,6,7]", "[4,5,6,7]"],
}
CA_DEFAULT: Dict[str, Any] = {"name": "ca", "position": "post_dw", "stages": [1, 2, 3, 4, 5, 6, 7],
                              "skip_t1": True, "reduction": 32, "min_channels": 8, "pool": "avg",
                              "gem_p": 3.0, "gem_learnable": True, "act": "h_swish",
                              "gate": "sigmoid", "directions": "hw", "norm": "bn", "bias": True}
_TRAIN = {"epochs": 6, "max_steps": None, "batch_size": 128, "eval_batch_size": 512, "lr": 0.1,
          "momentum": 0.9, "weight_decay": 5e-5, "warmup_epochs": 0.5, "threads": 2}
_AUDIT = {"madds": {"aten::add": 10, "aten::batch_norm": 52, "aten::hardtanh": 35, "aten::mean": 32,
                    "aten::mul": 32, "aten::sigmoid": 32},
          "fvcore": {"aten::add": 10, "aten::hardtanh": 35, "aten::mean": 32, "aten::mul": 32,
                     "aten::sigmoid": 32},
          "full": {}}


def synthetic_cost(attention: Mapping[str, Any]) -> Dict[str, float]:
    """Plausible cost of MobileNetV2-1.0 (CIFAR-10 geometry, ~88M madds) with an attention config."""
    madds, params, latency = 88.0e6, 2.24e6, 3.0
    kind = attention.get("name", "ca")
    if kind == "none":
        return {"madds": madds, "params": params, "latency_ms": latency}
    r = float(attention.get("reduction", 16 if kind in ("se", "cbam") else 32))
    share = {"ca": 2.6e6 * 32 / r, "se": 0.9e6 * 16 / r, "cbam": 1.1e6 * 16 / r, "eca": 0.02e6}[kind]
    pshare = {"ca": 0.21e6 * 32 / r, "se": 0.35e6 * 16 / r, "cbam": 0.36e6 * 16 / r, "eca": 0.0001e6}[kind]
    if kind == "ca":
        if attention.get("directions", "hw") != "hw":
            share *= 0.55
            pshare *= 0.6
        share *= {"post_expand": 1.0, "post_dw": 1.0, "post_project": 0.2, "post_add": 0.12}[
            attention.get("position", "post_dw")]
        stages = attention.get("stages", [1, 2, 3, 4, 5, 6, 7])
        stages = json.loads(stages) if isinstance(stages, str) else stages
        frac = sum({1: 0.0, 2: 0.12, 3: 0.14, 4: 0.16, 5: 0.18, 6: 0.2, 7: 0.2}[s] for s in stages)
        share *= frac
        pshare *= frac
    lat_attn = 0.5 * share / 2.6e6 * (1.15 if attention.get("pool", "avg") != "avg" else 1.0)
    return {"madds": madds + share, "params": params + pshare, "latency_ms": latency + 0.3 + lat_attn}


class TrialSpec:
    """One trial to write: params + distributions, state, metrics, history, user attrs."""

    def __init__(self, params: Mapping[str, Any], distributions: Mapping[str, Any], *,
                 state: str = "complete", metrics: Optional[Mapping[str, Any]] = None,
                 history: Optional[Sequence[Mapping[str, Any]]] = None,
                 overrides: Sequence[str] = (), attention: Optional[Mapping[str, Any]] = None,
                 seed: int = 0, user_attrs: Optional[Mapping[str, Any]] = None,
                 values: Optional[Sequence[float]] = None, num_classes: int = 10,
                 epochs: int = 6) -> None:
        self.params, self.distributions = dict(params), dict(distributions)
        self.state, self.metrics = state, dict(metrics or {})
        self.history, self.overrides = list(history or []), list(overrides)
        self.attention = dict(attention or CA_DEFAULT)
        self.seed, self.user_attrs = seed, dict(user_attrs or {})
        self.values, self.num_classes, self.epochs = values, num_classes, epochs


def _history(final: float, epochs_run: int, epochs: int, chance: float, rng) -> List[dict]:
    out = []
    for e in range(1, epochs_run + 1):
        frac = (1 - math.exp(-1.1 * e)) / (1 - math.exp(-1.1 * epochs))
        acc = chance + (final - chance) * frac + float(rng.normal(0, 0.3))
        out.append({"epoch": e, "train_loss": 2.3 * math.exp(-0.25 * e), "val_top1": acc,
                    "val_top5": min(100.0, acc + 25), "val_loss": 2.3 * math.exp(-0.2 * e),
                    "lr": 0.1 * 0.5 * (1 + math.cos(math.pi * e / epochs)), "steps": 40 * e,
                    "epoch_time_s": 9.5})
    return out


def _doc(spec: TrialSpec, metrics: Mapping[str, Any]) -> dict:
    cost = synthetic_cost(spec.attention)
    return {
        "metrics": dict(metrics), "history": spec.history,
        "config": {"seed": spec.seed, "device": "cpu", "attention": spec.attention,
                   "model": {"name": "mobilenetv2", "width": 1.0, "geometry": "cifar"},
                   "train": {**_TRAIN, "epochs": spec.epochs},
                   "data": {"name": "synthetic", "split_seed": 0}},
        "data": {"dataset": "synthetic", "format": "generated", "root": None,
                 "num_classes": spec.num_classes, "image_size": 32, "stored_size": 32,
                 "sizes": {"train": 5120, "val": 1024, "test": 1024}, "split_seed": 0,
                 "augmentation": "random crop (pad 4) + horizontal flip", "cache": {}},
        "cost": {"input_shape": [1, 3, 32, 32], "params": int(cost["params"]),
                 "attn_params": int(cost["params"] - 2.24e6),
                 "flops": {"madds": int(cost["madds"]), "fvcore": int(cost["madds"] * 1.04),
                           "full": int(cost["madds"] * 1.09)},
                 "audit": _AUDIT, "uncounted": {k: sum(v.values()) for k, v in _AUDIT.items()},
                 "conventions": {"madds": "paper M-Adds: multiply-adds of conv/linear layers",
                                 "fvcore": "fvcore FlopCountAnalysis defaults as-is",
                                 "full": "madds + 1 op per element for every other computing aten op"}},
        "hardware": {"device": "cpu", "cpu": "x86_64", "cpu_count": 2, "torch_threads": 2},
        "versions": {"python": "3.11", "torch": "2.13.0", "optuna": "5.0.0", "synthetic": True},
    }


def write_study(sweep_dir: str | Path, study_name: str, specs: Sequence[TrialSpec], *,
                objectives: Mapping[str, str], signature: Optional[Mapping[str, Any]] = None) -> str:
    """Add ``specs`` as trials of a new study in ``<sweep_dir>/optuna.db`` and write their
    ``metrics.json`` (complete and pruned trials; failed ones with a partial history).
    Returns the storage URL."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{sweep_dir / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name=study_name,
                                directions=list(objectives.values()))
    sig = dict(signature or {})
    sig.setdefault("objectives", dict(objectives))
    study.set_user_attr("coordsweep:signature", sig)
    start = len(study.get_trials(deepcopy=False))
    t0 = datetime.datetime.now() - datetime.timedelta(seconds=30 * len(specs) + 120)
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL,
              "running": TrialState.RUNNING, "waiting": TrialState.WAITING}
    frozen = []
    for i, spec in enumerate(specs):
        number = start + i
        run_dir = sweep_dir / str(number)
        ua = dict(spec.user_attrs)
        if spec.state != "waiting":
            ua.setdefault("overrides", spec.overrides)
            ua.setdefault("run_dir", str(run_dir))
        metrics = {k: v for k, v in spec.metrics.items()}
        if spec.state in ("complete", "pruned"):
            ua.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        values = None
        if spec.state == "complete":
            values = list(spec.values) if spec.values is not None else \
                [float(metrics[k]) for k in objectives]
        inter = {}
        if len(objectives) == 1 and spec.history:
            inter = {h["epoch"]: h["val_top1"] for h in spec.history}
        begin = t0 + datetime.timedelta(seconds=30 * i)
        end = begin + datetime.timedelta(seconds=float(metrics.get("wall_time_s", 60.0)))
        trial = create_trial(
            state=states[spec.state], params=spec.params if spec.state != "waiting" else None,
            distributions=spec.distributions if spec.state != "waiting" else None, values=values,
            user_attrs=ua, intermediate_values=inter,
            system_attrs={"fixed_params": spec.params} if spec.state == "waiting" else None)
        trial.datetime_start = begin if spec.state != "waiting" else None
        trial.datetime_complete = end if spec.state in ("complete", "pruned", "failed") else None
        frozen.append(trial)
        if spec.state in ("complete", "pruned", "failed") and (metrics or spec.history):
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.json").write_text(json.dumps(_doc(spec, metrics)))
    try:
        _bulk_insert(storage, study._study_id, frozen, start)
    except (ImportError, AttributeError, TypeError):  # Optuna internals moved: the slow way
        study.add_trials(frozen)
    return url


def _bulk_insert(storage, study_id: int, frozen: Sequence[Any], start: int) -> None:
    """``study.add_trials`` in one transaction through Optuna's own RDB models.

    ``add_trials`` issues two queries per attribute (~40 ms per trial here); a 1,000-trial
    benchmark study would take a minute to write. NOTE: Optuna-internal models (5.x).
    """
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    objects = []
    for k, t in enumerate(frozen):
        row = models.TrialModel(study_id=study_id, number=start + k, state=t.state,
                                datetime_start=t.datetime_start, datetime_complete=t.datetime_complete)
        objects.append(row)
        for name, value in t.params.items():
            d = t.distributions[name]
            objects.append(models.TrialParamModel(trial=row, param_name=name,
                                                  param_value=d.to_internal_repr(value),
                                                  distribution_json=distribution_to_json(d)))
        for obj, value in enumerate(t.values or []):
            v, kind = models.TrialValueModel.value_to_stored_repr(value)
            objects.append(models.TrialValueModel(trial=row, objective=obj, value=v, value_type=kind))
        for key, value in t.user_attrs.items():
            objects.append(models.TrialUserAttributeModel(trial=row, key=key, value_json=json.dumps(value)))
        for key, value in t.system_attrs.items():
            objects.append(models.TrialSystemAttributeModel(trial=row, key=key, value_json=json.dumps(value)))
        for step, value in t.intermediate_values.items():
            v, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
            objects.append(models.TrialIntermediateValueModel(trial=row, step=step, intermediate_value=v,
                                                              intermediate_value_type=kind))
    with _create_scoped_session(storage.scoped_session, True) as session:
        session.add_all(objects)


def _metrics(final: float, spec_attention: Mapping[str, Any], seed: int, epochs_run: int,
             status: str, rng, history: List[dict]) -> Dict[str, Any]:
    cost = synthetic_cost(spec_attention)
    lat = cost["latency_ms"] * float(np.exp(rng.normal(0, 0.02)))
    last = history[-1] if history else {"val_top1": final, "val_top5": final + 25, "val_loss": 1.0}
    return {"status": status, "val_top1": last["val_top1"], "val_top5": last["val_top5"],
            "val_loss": last["val_loss"], "best_val_top1": max(h["val_top1"] for h in history),
            "test_top1": last["val_top1"] - 0.3 + float(rng.normal(0, 0.2)),
            "test_top5": last["val_top5"], "loss": 0.8, "epochs_run": epochs_run,
            "steps": 40 * epochs_run, "wall_time_s": 60.0 * epochs_run / 6, "train_time_s": 55.0,
            "images_per_s": 560.0, "params": int(cost["params"]),
            "attn_params": int(cost["params"] - 2.24e6), "madds": int(cost["madds"]),
            "fvcore_flops": int(cost["madds"] * 1.04), "full_flops": int(cost["madds"] * 1.09),
            "latency_ms": lat, "latency_ms_b1": lat, "latency_ms_b32": lat * 9.0, "seed": seed,
            "threads": 2, "device": "cpu"}


def _attention(assign: Mapping[str, Any]) -> Dict[str, Any]:
    att = dict(CA_DEFAULT)
    if "attention" in assign:
        att = {"name": assign["attention"]} if assign["attention"] != "ca" else att
        if assign["attention"] in ("se", "cbam"):
            att["reduction"] = 16
    for k, v in assign.items():
        if k.startswith("attention."):
            att[k[len("attention."):]] = json.loads(v) if isinstance(v, str) and v.startswith("[") else v
    return att


def _fmt(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _variant_specs(variants: Mapping[str, Mapping[str, Any]], effects: Mapping[str, float],
                   seeds: Iterable[int], *, base_acc: float, seed_sd: float, noise: float,
                   epochs: int, rng, seeds_of: Optional[Mapping[str, Sequence[int]]] = None) -> List[TrialSpec]:
    from optuna.distributions import CategoricalDistribution

    seeds = list(seeds)
    all_seeds = sorted(set(seeds) | {s for ss in (seeds_of or {}).values() for s in ss})
    dists = {"variant": CategoricalDistribution(list(variants)),
             "seed": CategoricalDistribution(all_seeds)}
    offsets = {s: float(rng.normal(0, seed_sd)) for s in all_seeds}
    specs = []
    for name, assign in variants.items():
        for s in (seeds_of or {}).get(name, seeds):
            final = base_acc + effects.get(name, 0.0) + offsets[s] + float(rng.normal(0, noise))
            att = _attention(assign)
            hist = _history(final, epochs, epochs, 10.0, rng)
            hist[-1]["val_top1"] = final
            specs.append(TrialSpec(
                {"variant": name, "seed": s}, dists, metrics=_metrics(final, att, s, epochs, "ok", rng, hist),
                history=hist, overrides=[f"{k}={_fmt(v)}" for k, v in assign.items()] + [f"seed={s}"],
                attention=att, seed=s, user_attrs={"variant": name, "job_time_s": 61.0}, epochs=epochs))
    return specs


def _extras(specs: List[TrialSpec], rng, epochs: int) -> None:
    """A pruned, a failed, a running and a waiting trial (copies of the first spec's params)."""
    base = specs[0]
    att = base.attention
    hist = _history(40.0, 2, epochs, 10.0, rng)
    specs.append(TrialSpec(base.params, base.distributions, state="pruned", history=hist,
                           metrics=_metrics(40.0, att, base.seed, 2, "pruned", rng, hist),
                           overrides=base.overrides, attention=att, seed=base.seed, epochs=epochs,
                           user_attrs={"variant": base.params.get("variant")} if "variant" in base.params else {}))
    specs.append(TrialSpec(base.params, base.distributions, state="failed", overrides=base.overrides,
                           attention=att, seed=base.seed, epochs=epochs,
                           user_attrs={"fail_reason": "trial status 'diverged': loss is nan at step 57 "
                                                      "<check lr>"}))
    specs.append(TrialSpec(base.params, base.distributions, state="running", overrides=base.overrides,
                           attention=att, seed=base.seed, epochs=epochs))
    specs.append(TrialSpec(base.params, base.distributions, state="waiting", attention=att,
                           seed=base.seed, epochs=epochs))


def ofat_study(sweep_dir: str | Path, *, effects: Optional[Mapping[str, float]] = None,
               seeds: Iterable[int] = range(5), factors: Optional[Mapping[str, Sequence[Any]]] = None,
               base_acc: float = 62.0, seed_sd: float = 1.0, noise: float = 0.2, epochs: int = 6,
               seeds_of: Optional[Mapping[str, Sequence[int]]] = None, extras: bool = True,
               study_name: str = "ca_ofat", seed: int = 0) -> str:
    """An OFAT study like ``search_space=ca_ofat`` with ``seed=choice(<seeds>)``.

    Args:
        sweep_dir: where ``optuna.db`` and the run dirs go.
        effects: variant name (``attention.pool=max``) -> true accuracy change in points.
        seeds: seeds of every variant (``seeds_of`` overrides per variant).
        factors: factor -> levels (default ``OFAT_FACTORS``).
        extras: add a pruned, a failed, a running and a waiting trial.
    Returns the storage URL.
    """
    rng = np.random.default_rng(seed)
    variants: Dict[str, Dict[str, Any]] = {"paper_default": {"attention": "ca"}}
    for key, levels in (factors or OFAT_FACTORS).items():
        for level in levels:
            variants[f"{key}={_fmt(level)}"] = {"attention": "ca", key: level}
    specs = _variant_specs(variants, effects or {}, seeds, base_acc=base_acc, seed_sd=seed_sd,
                           noise=noise, epochs=epochs, rng=rng, seeds_of=seeds_of)
    if extras:
        _extras(specs, rng, epochs)
    signature = {"fixed": [], "params": {}, "requires": {},
                 "variants": {n: [f"{k}={_fmt(v)}" for k, v in a.items()] for n, a in variants.items()}}
    return write_study(sweep_dir, study_name, specs, objectives={"val_top1": "maximize"},
                       signature=signature)


def baselines_study(sweep_dir: str | Path, *, effects: Optional[Mapping[str, float]] = None,
                    seeds: Iterable[int] = range(3), epochs: int = 6, seed: int = 0,
                    study_name: str = "baselines") -> str:
    """Like ``search_space=baselines``: none, se, cbam, eca and ca, each over ``seeds``."""
    rng = np.random.default_rng(seed)
    variants = {k: {"attention": k} for k in ("none", "se", "cbam", "eca", "ca")}
    effects = dict({"none": -1.5, "se": -0.6, "cbam": -0.5, "eca": -0.7} if effects is None else effects)
    specs = _variant_specs(variants, effects, seeds, base_acc=63.0, seed_sd=1.0, noise=0.3,
                           epochs=epochs, rng=rng)
    signature = {"variants": {n: [f"attention={n}"] for n in variants}}
    return write_study(sweep_dir, study_name, specs, objectives={"val_top1": "maximize"},
                       signature=signature)


def joint_study(sweep_dir: str | Path, *, n_trials: int = 1000, effects: Optional[Mapping[str, float]] = None,
                seed: int = 0, epochs: int = 6, study_name: str = "ca_joint",
                state_mix: Sequence[float] = (0.86, 0.07, 0.05, 0.02)) -> str:
    """Like ``search_space=ca_joint`` (two objectives: val_top1 up, madds down), ``n_trials``
    random draws; the first trial is the enqueued paper default.

    Args:
        effects: ``"<param>=<level>"`` -> true accuracy change (default: small r and
            swish/h_swish help, relu and softmax_hw hurt, pool does nothing).
        state_mix: fractions of complete, pruned, failed and running trials.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    rng = np.random.default_rng(seed)
    effects = dict(effects if effects is not None else {
        "attention.reduction=8": 0.8, "attention.reduction=16": 0.4, "attention.reduction=64": -0.4,
        "attention.act=relu": -1.0, "attention.act=swish": 0.1, "attention.gate=softmax_hw": -0.6,
        "attention.directions=h": -0.8, "attention.directions=w": -0.8,
        "attention.position=post_project": -0.5, "attention.stages=[2,3,4]": -0.7,
        "attention.norm=none": -0.3})
    dists = {k: CategoricalDistribution(v) for k, v in JOINT_SPACE.items()}
    gem = FloatDistribution(1.0, 6.0)
    default = {"attention.reduction": 32, "attention.pool": "avg", "attention.act": "h_swish",
               "attention.gate": "sigmoid", "attention.directions": "hw", "attention.norm": "bn",
               "attention.position": "post_dw", "attention.stages": "[1,2,3,4,5,6,7]"}
    states = rng.choice(["complete", "pruned", "failed", "running"], size=n_trials, p=list(state_mix))
    states[0] = "complete"
    specs = []
    for i in range(n_trials):
        assign = dict(default) if i == 0 else {k: v[int(rng.integers(len(v)))] for k, v in JOINT_SPACE.items()}
        params = dict(assign)
        d = dict(dists)
        if assign["attention.pool"] == "gem":
            params["attention.gem_p"] = float(rng.uniform(1.0, 6.0))
            d["attention.gem_p"] = gem
        d = {k: d[k] for k in params}
        att = _attention({"attention": "ca", **assign})
        final = 62.0 + sum(effects.get(f"{k}={_fmt(v)}", 0.0) for k, v in assign.items()) \
            + float(rng.normal(0, 0.4))
        state = str(states[i])
        epochs_run = epochs if state == "complete" else int(rng.integers(1, epochs))
        hist = _history(final, epochs_run, epochs, 10.0, rng) if state in ("complete", "pruned") else []
        if state == "complete":
            hist[-1]["val_top1"] = final
        metrics = _metrics(final, att, 0, epochs_run, "ok" if state == "complete" else "pruned", rng,
                           hist) if hist else {}
        ua = {"enqueued_as": "paper_default"} if i == 0 else {}
        if state == "failed":
            ua["fail_reason"] = "RuntimeError: synthetic failure"
        values = [metrics["val_top1"], float(metrics["madds"])] if state == "complete" else None
        specs.append(TrialSpec(params, d, state=state, metrics=metrics, history=hist,
                               overrides=[f"{k}={_fmt(v)}" for k, v in params.items()],
                               attention=att, seed=0, user_attrs=ua, values=values, epochs=epochs))
    signature = {"fixed": ["attention=ca"], "variants": {},
                 "requires": {"attention.gem_p": {"attention.pool": ["gem"]}}}
    return write_study(sweep_dir, study_name, specs, objectives={"val_top1": "maximize", "madds": "minimize"},
                       signature=signature)
