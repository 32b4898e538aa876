"""The sweep: parse the search space, prepare the study, run barrier-free workers, summarize.

``CoordSweeperImpl.sweep`` decides everything once (search space, sampler, budget, storage)
and checks it before any training: syntax and conflicts, composition and the ``validate``
callable on representative configs, the storage URL and the study's compatibility with this
command. Then it runs ``n_workers`` worker jobs: spawned local processes for Hydra's basic
launcher (``local_pool``), or jobs of the configured launcher (joblib, submitit, ray) - each
job is one ``WorkerTask`` loop. Workers meet only through the storage.
"""
from __future__ import annotations

import copy
import importlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from search_space.config import ConfigError
from sweep import storage as st
from sweep.sweeper.params import (VARIANT, Groups, SearchSpace, build_space, check_assignment,
                                  expand_ofat, format_value)
from sweep.sweeper.samplers import (make_pruner, make_sampler, parse_constraints,
                                    parse_objectives, resolve_sampler_name)
from sweep.sweeper.adaptive import EXTRA, check_adaptive, queue_extra_seeds
from sweep.sweeper.worker import SweepPlan, WorkerTask, counted_trials, work_left

log = logging.getLogger(__name__)


class SweepConfigError(ConfigError, CompactHydraException):
    """A ``ConfigError`` that Hydra prints as its message alone (no traceback)."""


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
_MAX_CHECKED_CONFIGS = 64


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


class HydraGroups(Groups):
    """Config groups of the app and the fields of their options, by composing them."""

    def __init__(self, config_loader, master_config: DictConfig) -> None:
        super().__init__()
        self.loader, self.master = config_loader, master_config
        self._groups: Dict[str, bool] = {}
        self._fields: Dict[tuple, Optional[List[str]]] = {}

    def __contains__(self, group: str) -> bool:
        if group not in self._groups:
            try:
                self._groups[group] = bool(self.loader.get_group_options(group))
            except Exception:
                self._groups[group] = False
        return self._groups[group]

    def fields(self, group: str, option: Any) -> Optional[List[str]]:
        key = (group, option)
        if key not in self._fields:
            try:
                cfg = self.loader.load_sweep_config(self.master, [f"{group}={format_value(option)}"])
                node = OmegaConf.select(cfg, group.replace("/", "."))
                self._fields[key] = list(node.keys()) if isinstance(node, DictConfig) else None
            except Exception:
                self._fields[key] = None
        return self._fields[key]


class CoordSweeperImpl:
    """Implementation behind ``CoordSweeper`` (arguments: ``CoordSweeperConf``)."""

    def __init__(self, **conf: Any) -> None:
        self.conf = {k: _plain(v) for k, v in conf.items()}
        self.hydra_context = None
        self.task_function = None
        self.config: Optional[DictConfig] = None
        self._n_seeds = 1  # seeds per configuration at most (repeats, adaptive max_repeats)

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config

    # -- planning ------------------------------------------------------------------------

    def _default(self, key: str) -> Any:
        choices = OmegaConf.select(self.config, "hydra.runtime.choices") or {}
        if key in choices:
            return choices[key]
        try:
            return _plain(OmegaConf.select(self.config, key.replace("/", ".")))
        except Exception:
            return None

    def build_space(self, arguments: List[str]) -> SearchSpace:
        c = self.conf
        variants = dict(c.get("variants") or {})
        ofat = c.get("ofat")
        if ofat and ofat.get("factors"):
            for name, values in expand_ofat(ofat.get("base") or {}, ofat["factors"],
                                            ofat.get("base_name") or "default").items():
                if name in variants:
                    raise ConfigError(f"hydra.sweeper.ofat makes a variant {name!r} that "
                                      f"hydra.sweeper.variants already has")
                variants[name] = values
        groups = HydraGroups(self.hydra_context.config_loader, self.config)
        return build_space(arguments, c.get("params") or {}, variants=variants,
                           when=c.get("when") or {}, groups=groups, default=self._default)

    def _check_configs(self, space: SearchSpace, enqueued: Mapping[str, Dict[str, Any]]) -> int:
        """Compose representative trial configs (and run ``validate`` on them) before training:
        every variant, every value of each discrete param, the ends of numeric ones, and every
        enqueued config. Returns the number of configs checked."""
        validate = None
        if self.conf.get("validate"):
            path = self.conf["validate"]
            module, _, name = path.rpartition(".")
            try:
                validate = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError, ValueError) as e:
                raise ConfigError(f"hydra.sweeper.validate={path!r} cannot be imported: {e}") from None
        samples: List[tuple] = [(f"enqueue.{n}", a) for n, a in enqueued.items()]
        for p in space.params:
            values = p.finite_values
            d = p.distribution
            values = values if values is not None else [d.low, d.high]
            if len(values) > 16 and p.name != VARIANT:
                values = [values[0], values[-1]]
            for v in values:
                samples.append((f"{p.name}={v}", _complete(space, {p.name: v})))
        seen, checked = set(), 0
        loader = self.hydra_context.config_loader
        for label, assignment in samples:
            if assignment is None:
                continue
            overrides = space.overrides(assignment)
            if self._n_seeds > 1:  # the highest seed a trial may get composes too
                overrides = overrides + [f"{self.conf.get('seed_key') or 'seed'}="
                                         f"{self._n_seeds - 1}"]
            key = tuple(overrides)
            if key in seen:
                continue
            seen.add(key)
            if checked >= _MAX_CHECKED_CONFIGS:
                break
            checked += 1
            try:
                cfg = loader.load_sweep_config(self.config, overrides)
            except Exception as e:
                raise ConfigError(f"a trial config does not compose ({label}; overrides "
                                  f"{' '.join(overrides)}): {e}") from None
            if validate is not None:
                task_cfg = copy.deepcopy(cfg)
                with read_write(task_cfg), open_dict(task_cfg):
                    del task_cfg["hydra"]
                try:
                    validate(task_cfg)
                except Exception as e:
                    raise ConfigError(f"trial config with {' '.join(overrides) or 'no overrides'} "
                                      f"is invalid: {e}") from None
        return checked

    def _masked_config(self, url: str) -> DictConfig:
        """The master config with the storage password masked (trial configs are composed from
        it, so .hydra/*.yaml and multirun.yaml never hold the password)."""
        secrets = st.secrets_of(url)
        cfg = copy.deepcopy(self.config)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            if cfg.hydra.sweeper.get("storage") is not None:
                cfg.hydra.sweeper.storage = st.mask_url(url)
            lines = []
            for line in OmegaConf.to_container(cfg.hydra.overrides.hydra, resolve=False):
                if line.startswith("hydra.sweeper.storage="):
                    line = "hydra.sweeper.storage=" + format_value(st.mask_url(url))
                lines.append(st.mask_text(line, secrets))
            cfg.hydra.overrides.hydra = lines
        return cfg

    def _storage_template(self, url: str) -> str:
        raw = OmegaConf.to_container(self.config.hydra.sweeper, resolve=False).get("storage")
        if isinstance(raw, str) and "${" in raw and not url.startswith(("sqlite:", "journal:")):
            # resolved in each worker: the password stays out of pickles on disk
            scheme, given = url.split("://", 1)[0], raw.split("://", 1)[0]
            return scheme + raw[len(given):] if given != scheme else raw
        return url

    def plan(self, arguments: List[str]) -> tuple:
        """Decide and check everything; returns (plan, study, masked config, space size)."""
        import optuna

        c = self.conf
        sweep_dir = str(self.config.hydra.sweep.dir)
        url = st.resolve_storage(c.get("storage"), sweep_dir)
        space = self.build_space(arguments)
        if not space.params:
            raise ConfigError("nothing to sweep: choose a search space (search_space=ca_ofat | "
                              "ca_joint | baselines), set hydra.sweeper.params, or give sweeps on "
                              "the command line (e.g. 'attention.reduction=choice(8,16,32)')")
        objectives, directions = parse_objectives(c.get("objectives") or {})
        constraints = parse_constraints(c.get("constraints") or [])
        sampler_conf = c.get("sampler") or {}
        sampler = resolve_sampler_name(sampler_conf.get("name", "auto"), space)
        pruner_conf = c.get("pruner") or {}
        size = space.size()
        n_trials = c.get("n_trials")
        if n_trials is None:
            if size is None:
                raise ConfigError("hydra.sweeper.n_trials is required: the search space is "
                                  "continuous (or above 100k configs)")
            n_trials = size
        if int(n_trials) < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={n_trials} must be >= 1")
        n_workers = int(c.get("n_workers") or 1)
        if n_workers < 1:
            raise ConfigError(f"hydra.sweeper.n_workers={n_workers} must be >= 1")
        # samplers, pruners and their options fail here, not in the workers
        make_sampler(sampler, sampler_conf.get("options") or {}, seed=sampler_conf.get("seed"),
                     n_objectives=len(objectives), space=space, constrained=bool(constraints))
        make_pruner(pruner_conf.get("name", "none"), pruner_conf.get("options") or {},
                    n_objectives=len(objectives))
        if pruner_conf.get("metric") and len(objectives) > 1:
            raise ConfigError("hydra.sweeper.pruner.metric: pruning needs a single objective")
        repeats, seed_key, scheduler = self._check_repeats_and_scheduler(
            space, objectives, str(pruner_conf.get("name", "none")).lower())
        max_repeats = check_adaptive(c.get("adaptive_repeats"), repeats)
        self._n_seeds = max(repeats, max_repeats)
        if c.get("enqueue") and sampler == "grid":
            raise ConfigError("hydra.sweeper.enqueue does not combine with the grid sampler (the "
                              "grid already holds every config and would train them twice); "
                              "use bruteforce, or drop enqueue")
        enqueued = {str(name): check_assignment(space, dict(values), f"hydra.sweeper.enqueue.{name}")
                    for name, values in (c.get("enqueue") or {}).items()}
        self._check_configs(space, enqueued)

        storage = st.open_storage(url, heartbeat_interval=c.get("heartbeat_interval"),
                                  grace_period=c.get("grace_period"), max_retry=c.get("max_retry"))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(storage=storage, study_name=c["study_name"],
                                        directions=directions, load_if_exists=True)
        except Exception as e:
            raise ConfigError(f"{st.STORAGE_KEY}={st.mask_url(url)!r}: cannot create or load study "
                              f"{c['study_name']!r}: "
                              f"{st.mask_text(type(e).__name__ + ': ' + str(e), st.secrets_of(url))}") from None
        have = [d.name.lower() for d in study.directions]
        if have != directions:
            raise ConfigError(f"study {c['study_name']!r} in {st.mask_url(url)} optimizes {have}, this "
                              f"command {directions} ({objectives}); use another "
                              f"hydra.sweeper.study_name")
        self._check_signature(study, space, objectives, directions, url)
        if not study.get_trials(deepcopy=False) and len(enqueued) > int(n_trials):
            raise ConfigError(f"hydra.sweeper.enqueue has {len(enqueued)} configs but n_trials is "
                              f"{n_trials}")
        for name, params in enqueued.items():
            study.enqueue_trial(params, user_attrs={"enqueued_as": name}, skip_if_exists=True)

        timeout = c.get("timeout")
        plan = SweepPlan(
            study_name=c["study_name"], storage=self._storage_template(url),
            objectives=objectives, directions=directions, space=space, n_trials=int(n_trials),
            sampler=sampler, sampler_options=dict(sampler_conf.get("options") or {}),
            seed=sampler_conf.get("seed"), pruner=str(pruner_conf.get("name", "none")).lower(),
            pruner_options=dict(pruner_conf.get("options") or {}),
            prune_metric=pruner_conf.get("metric"), constraints=constraints,
            deadline=None if timeout is None else time.time() + float(timeout),
            reuse_completed=bool(c.get("reuse_completed", True)),
            reuse_pruned=bool(c.get("reuse_pruned", True)), max_repeats=max_repeats,
            heartbeat_interval=c.get("heartbeat_interval"), grace_period=c.get("grace_period"),
            max_retry=c.get("max_retry"), n_workers=n_workers, run_id=uuid.uuid4().hex[:12],
            repeats=repeats, seed_key=seed_key, scheduler=scheduler)
        return plan, study, self._masked_config(url), size, url

    def _check_repeats_and_scheduler(self, space: SearchSpace, objectives: List[str],
                                     pruner: str):
        """Validate ``repeats``/``seed_key`` and ``scheduler``; return them normalized."""
        c = self.conf
        try:
            repeats = int(1 if c.get("repeats") is None else c["repeats"])
        except (TypeError, ValueError):
            raise ConfigError(f"hydra.sweeper.repeats={c.get('repeats')!r} must be an integer "
                              f">= 1") from None
        if repeats < 1:
            raise ConfigError(f"hydra.sweeper.repeats={repeats} must be >= 1")
        seed_key = str(c.get("seed_key") or "seed")
        if repeats > 1:
            swept = {p.name for p in space.params}
            fixed = {f.split("=", 1)[0].lstrip("+~") for f in space.fixed}
            if seed_key in swept or seed_key in fixed:
                raise ConfigError(f"hydra.sweeper.repeats={repeats} sets {seed_key} to 0.."
                                  f"{repeats - 1} itself; drop {seed_key} from the sweep (or set "
                                  f"repeats: 1 and sweep {seed_key} as a param)")
            if pruner != "none":
                raise ConfigError(f"hydra.sweeper.pruner.name={pruner} does not combine with "
                                  f"hydra.sweeper.repeats={repeats} (a trial runs every seed); "
                                  f"use pruner none")
        from sweep.sweeper.rungs import check_scheduler

        scheduler = check_scheduler(c.get("scheduler") or {}, objectives)
        if scheduler["name"] != "none" and scheduler["max_epochs"] is None:
            epochs = self._default("train.epochs")  # the app's full budget, when it has one
            if isinstance(epochs, int) and not isinstance(epochs, bool):
                scheduler["max_epochs"] = epochs
        if scheduler["name"] != "none":
            if pruner != "none":
                raise ConfigError(f"hydra.sweeper.scheduler.name={scheduler['name']} and "
                                  f"hydra.sweeper.pruner.name={pruner}: choose one (set the "
                                  f"other to none)")
            if repeats > 1:
                raise ConfigError(f"hydra.sweeper.scheduler.name={scheduler['name']} does not "
                                  f"combine with hydra.sweeper.repeats={repeats}; use repeats: 1")
        return repeats, seed_key, scheduler

    def _check_signature(self, study, space: SearchSpace, objectives, directions, url) -> None:
        from optuna.distributions import distribution_to_json

        sig = {"fixed": sorted(space.fixed),
               "params": {p.name: distribution_to_json(p.distribution) for p in space.params},
               "variants": space.variants, "requires": space.requires,
               "objectives": dict(zip(objectives, directions))}
        old = study.user_attrs.get(st.SIGNATURE)
        if old is None:
            study.set_user_attr(st.SIGNATURE, sig)
            return
        diff = [k for k in sig if old.get(k) != _jsonable(sig[k])]
        if diff:
            details = "; ".join(f"{k}: stored {old.get(k)!r}, now {_jsonable(sig[k])!r}" for k in diff)
            raise ConfigError(f"study {study.study_name!r} in {st.mask_url(url)} was created by a "
                              f"different sweep ({details}). Rerun it with the same overrides to "
                              f"continue it, or start a new study with "
                              f"hydra.sweeper.study_name=<new name>")

    # -- running ---------------------------------------------------------------------------

    def sweep(self, arguments: List[str]) -> Any:
        import cloudpickle
        import optuna
        from hydra.core.singleton import Singleton

        assert self.config is not None and self.hydra_context is not None
        started = time.time()
        try:
            plan, study, masked, size, url = self.plan(list(arguments))
        except ConfigError as e:
            raise SweepConfigError(str(e)) from None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(masked, sweep_dir / "multirun.yaml")

        retry = plan.retry()
        st.fail_dead_local_trials(study, retry)
        st.fail_stale_trials(study, retry)
        fail_orphaned_trials(study, plan, retry)
        trials = study.get_trials(deepcopy=False)
        done = len([t for t in trials if t.state.is_finished()])
        launcher = str(OmegaConf.select(self.config, "hydra.launcher._target_"))
        local = launcher == BASIC_LAUNCHER
        log.info(f"coordsweep: study {plan.study_name!r} in {st.mask_url(url)}; "
                 f"sampler {plan.sampler}, {len(plan.space.params)} param(s)"
                 + (f", {size} configs" if size is not None else "")
                 + f"; n_trials {plan.n_trials} ({done} finished before this run); "
                 f"{plan.n_workers} worker(s) "
                 + ("as local processes" if local else f"via {launcher.rsplit('.', 1)[-1]}"))
        log.info(f"coordsweep: trial run dirs: {sweep_dir}/<trial number>")
        if url.startswith("sqlite:") and not local and "joblib" not in launcher.lower():
            log.warning("coordsweep: SQLite is for workers on one machine (it is in WAL mode); "
                        f"{launcher.rsplit('.', 1)[-1]} may start workers on other machines: use "
                        "hydra.sweeper.storage=postgresql://... (or journal:/shared/path.log)")

        def has_work() -> bool:
            if plan.deadline is not None and time.time() >= plan.deadline:
                return False
            return work_left(plan, study.get_trials(deepcopy=False))

        task = WorkerTask(plan, self.task_function, self.hydra_context, masked)
        if plan.max_repeats and not has_work():
            queue_extra_seeds(study, plan)  # a resumed sweep whose regular trials are done
        if not has_work():
            log.info("coordsweep: the study already has its n_trials; nothing to run")
        elif local:
            from sweep.sweeper.local_pool import run_local_workers

            payload = cloudpickle.dumps((Singleton.get_state(), self.hydra_context, masked, task))
            run_local_workers(payload, plan.n_workers, study, plan, has_work=has_work,
                              max_restarts=int(self.conf.get("max_worker_restarts") or 0))
        else:
            self._run_launcher(task, masked, plan, study, has_work)
        st.fail_trials(study, [t for t in st.running_trials(study)
                               if isinstance(t.system_attrs.get(st.WORKER), dict)
                               and t.system_attrs[st.WORKER].get("run") == plan.run_id],
                       "the sweep ended while this trial was marked running (its worker is gone)",
                       retry)
        return self._summary(study, plan, sweep_dir, url, time.time() - started)

    def _run_launcher(self, task: WorkerTask, masked: DictConfig, plan: SweepPlan, study,
                      has_work) -> None:
        from hydra.core.plugins import Plugins

        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=task, config=masked)
        n_jobs = OmegaConf.select(self.config, "hydra.launcher.n_jobs")
        if isinstance(n_jobs, int) and 0 < n_jobs < plan.n_workers:
            log.warning(f"hydra.launcher.n_jobs={n_jobs} < hydra.sweeper.n_workers="
                        f"{plan.n_workers}: only {n_jobs} workers run at a time")
        first, launches = 0, 0
        max_launches = 1 + int(self.conf.get("max_worker_restarts") or 0)
        while launches < max_launches and has_work():
            before = len(study.get_trials(deepcopy=False))
            from sweep.sweeper.local_pool import worker_job_overrides

            jobs = [worker_job_overrides(plan, first + k) for k in range(plan.n_workers)]
            try:
                rets = launcher.launch(jobs, initial_job_idx=first)
                for r in rets:
                    if r.status.name == "FAILED":
                        log.warning(f"worker job {r.hydra_cfg.hydra.job.num if r.hydra_cfg else '?'}"
                                    f" failed: {r._return_value!r}")
            except Exception as e:
                log.warning(f"the launcher failed ({type(e).__name__}: "
                            f"{st.mask_text(str(e), st.secrets_of(plan.storage))}); its workers are gone")
            first += plan.n_workers
            launches += 1
            st.fail_trials(study, [t for t in st.running_trials(study)
                                   if isinstance(t.system_attrs.get(st.WORKER), dict)
                                   and t.system_attrs[st.WORKER].get("run") == plan.run_id],
                           "worker job ended (killed or failed) while running this trial",
                           plan.retry())
            if len(study.get_trials(deepcopy=False)) == before:
                log.error("worker jobs made no progress; stopping (see <hydra.sweep.dir>/workers/)")
                break

    def _summary(self, study, plan: SweepPlan, sweep_dir: Path, url: str, elapsed: float):
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        by_state: Dict[str, int] = {}
        for t in trials:
            by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        extra = [t for t in trials if EXTRA in t.system_attrs]
        if not complete:
            best = []
        elif extra:
            best = _best_of_latest(complete, study.directions)
        elif len(plan.objectives) == 1:
            best = [study.best_trial]
        else:
            best = study.best_trials
        best = [t for t in best if "reused_from" not in t.user_attrs]  # copies of others
        results = {
            "study_name": plan.study_name, "storage": st.mask_url(url),
            "objectives": dict(zip(plan.objectives, plan.directions)),
            "n_trials": plan.n_trials, "trials": by_state,
            "budget_used": len(counted_trials(trials)),
            "best": [{"number": t.number, "values": dict(zip(plan.objectives, t.values)),
                      "params": t.params, "run_dir": t.user_attrs.get("run_dir")} for t in best],
            "wall_time_s": round(elapsed, 2),
        }
        if plan.max_repeats:
            results["extra_seed_trials"] = {
                str(t.number): {"config_of": t.system_attrs[EXTRA].get("parent"),
                                "seeds": t.system_attrs[EXTRA].get("seeds"), "state": t.state.name}
                for t in extra}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info(f"coordsweep: done in {elapsed:.1f} s; trials by state: {by_state}")
        for r in results["best"]:
            log.info(f"coordsweep: best trial {r['number']}: {r['values']} {r['params']} "
                     f"({r['run_dir']})")
        if self.conf.get("report", True):
            self._report(plan, sweep_dir, url)
        return results

    def _report(self, plan: SweepPlan, sweep_dir: Path, url: str) -> None:
        """Write the sweep's report (analysis.report) and print its answers; a report error
        never fails a finished sweep."""
        try:
            from analysis.report import build_report

            paths = build_report(url, plan.study_name, sweep_dir / "report")
        except Exception as e:  # noqa: BLE001 - the trials are stored; the report can be rebuilt
            log.warning(f"coordsweep: report failed ({type(e).__name__}: "
                        f"{st.mask_text(str(e), st.secrets_of(url))}); rebuild it with "
                        f"python -m analysis.report {sweep_dir}")
            return
        for line in paths.answers:
            log.info(line)
        log.info(f"coordsweep: report {paths.html} (Markdown: {paths.markdown})")


def orphan_grace(plan: SweepPlan) -> float:
    """Seconds after which a running trial without a worker is an orphan: the heartbeat's
    grace period (2 x the interval when unset), 120 s without a heartbeat."""
    if plan.grace_period:
        return float(plan.grace_period)
    return 2.0 * float(plan.heartbeat_interval) if plan.heartbeat_interval else 120.0


def fail_orphaned_trials(study, plan: SweepPlan, retry, *, poll: float = 0.2) -> List[int]:
    """Fail and re-queue RUNNING trials that never got a worker.

    A worker records itself on a trial (``storage.WORKER``) as its objective starts, a few
    milliseconds after Optuna created the trial (or popped it from the queue). A worker killed
    in between leaves a RUNNING trial that no dead-worker check can attribute and that may
    have no heartbeat either; it would hold its config and a unit of budget forever, so the
    resumed sweep would end without it. Such a trial is failed (with the reason) and
    re-queued once it is older than ``orphan_grace``; younger ones are waited for, since a
    live worker of another sweep may be about to record itself on them.

    Returns the numbers of the trials failed.
    """
    from datetime import datetime

    grace = orphan_grace(plan)
    failed: List[int] = []
    announced = False
    while True:
        orphans = [t for t in st.running_trials(study) if st.WORKER not in t.system_attrs]
        now = datetime.now()
        ages = {t.number: (now - t.datetime_start).total_seconds() if t.datetime_start else grace
                for t in orphans}
        old = [t for t in orphans if ages[t.number] >= grace]
        if old:
            failed += st.fail_trials(study, old, (
                f"no worker ever started this trial (its worker was killed between creating it "
                f"and running it); failed after {grace:g} s"), retry)
        young = [t for t in orphans if ages[t.number] < grace]
        if not young:
            return failed
        if not announced:
            log.info(f"coordsweep: trial(s) {[t.number for t in young]} are RUNNING without a "
                     f"worker; waiting up to {grace - max(ages[t.number] for t in young):.0f} s "
                     f"for a worker to claim them before re-queuing them")
            announced = True
        time.sleep(min(poll, max(0.01, grace - max(ages[t.number] for t in young))))


def _best_of_latest(complete: List[Any], directions) -> List[Any]:
    """The best COMPLETE trials when adaptive repeats ran extra seeds: per configuration only
    the trial told the mean over the most seeds (``repeats``) competes, so a first trial's
    stale mean over fewer seeds is not reported as best. Uses Optuna's Pareto-front helper
    (feasible trials only when there are constraints); one objective: the best value."""
    from optuna.study._multi_objective import _get_pareto_front_trials_by_trials

    latest: Dict[str, Any] = {}
    for t in sorted(complete, key=lambda t: t.number):
        if "reused_from" in t.user_attrs:
            continue
        key = str(sorted(t.params.items()))
        seeds = t.user_attrs.get("repeats", 1)
        if key not in latest or seeds > latest[key].user_attrs.get("repeats", 1):
            latest[key] = t
    constrained = any(getattr(t, "constraints", None) for t in latest.values())
    front = _get_pareto_front_trials_by_trials(list(latest.values()), directions,
                                               consider_constraint=constrained)
    return sorted(front, key=lambda t: t.number)[:1] if len(directions) == 1 else front


def _complete(space: SearchSpace, fixed: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """A full assignment with ``fixed`` values and first values elsewhere, choosing values of
    earlier params that let the fixed ones apply; None if they cannot apply."""
    out: Dict[str, Any] = {}
    needs: Dict[str, List[Any]] = {}
    for name in fixed:
        for key, allowed in space.requires.get(name, {}).items():
            needs[key] = allowed
    for p in space.params:
        if not space.applies(p.name, out):
            if p.name in fixed:
                return None
            continue
        if p.name in fixed:
            out[p.name] = fixed[p.name]
            continue
        values = p.finite_values or [p.distribution.low]
        if p.name in needs:
            values = [v for v in values if v in needs[p.name]] or values
        out[p.name] = values[0]
    return out


def _jsonable(x: Any) -> Any:
    import json

    return json.loads(json.dumps(x))
