"""Search spaces: Hydra's override syntax -> Optuna distributions, and sampled values -> overrides.

Free functions, testable without a Hydra app. Parsing uses Hydra's own override parser
(https://hydra.cc/docs/advanced/override_grammar/extended/) and follows Hydra's meaning:

==============================  ============================================================
``choice(a,b)``, ``a,b``         categorical; lists/dicts allowed as choices (``choice([1,2],[3])``)
``shuffle(...)``, ``sort(...)``  the same categorical (order is irrelevant to a sampler)
``range(a,b[,s])``               a, a+s, ... < b (Hydra/Python: ``range(1,5)`` is 1,2,3,4),
                                 int or stepped float distribution
``interval(a,b)``                float in [a, b)  (``interval(1,5)`` is cast to floats by Hydra)
``int(interval(a,b))``           int in a..b-1 (Hydra: ``a <= x < b``)
``tag(log, ...)``                log scale (intervals; int ranges with step 1)
plain value                      fixed for every trial (not an Optuna param)
==============================  ============================================================

Conditional params: a param ``G.X`` where ``G`` is a config group (e.g. ``attention.pool``) is
sampled only when the chosen option of ``G`` has a field ``X`` (``attention=ca`` has ``pool``,
``attention=se`` has not). ``when: {param: {key: [values]}}`` adds explicit conditions (e.g. sample
``attention.gem_p`` only when ``attention.pool`` is ``gem``). Keys are sampled in dependency
order (define-by-run), so Optuna never sees a param that does nothing.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (ChoiceSweep, Glob, IntervalSweep, Override, Quote,
                                              QuotedString, RangeSweep, ValueType)
from hydra.errors import HydraException
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from search_space.config import ConfigError

# Optuna param holding the name of the chosen variant (``variants`` / ``ofat``)
VARIANT = "variant"
SUPPORTED_TAGS = frozenset({"log"})
CLI = "the command line"
PARAMS = "hydra.sweeper.params"
# Hydra reads these bare words as non-strings; such strings must be quoted
_KEYWORDS = frozenset({"true", "false", "null", "nan", "inf"})
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./]*\Z")
_MAX_ENUMERATE = 100_000

# -- values <-> override text ----------------------------------------------------------------


def format_value(value: Any) -> str:
    """The override text Hydra parses back to ``value`` (strings quoted when needed).

    Example: ``format_value("a,b")`` is ``'a,b'``; ``format_value([1, "x"])`` is ``[1,x]``.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        if _BARE.match(value) and value.lower() not in _KEYWORDS:
            return value
        return QuotedString(text=value, quote=Quote.single).with_quotes()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if not (isinstance(k, str) and _BARE.match(k)):
                raise ConfigError(f"dict key {k!r} cannot be written as a Hydra override "
                                  "(use identifier-like keys)")
            items.append(f"{k}:{format_value(v)}")
        return "{" + ",".join(items) + "}"
    raise ConfigError(f"value {value!r} of type {type(value).__name__} cannot be written as a "
                      "Hydra override (allowed: null, bool, int, float, str, list, dict)")


def _plain(value: Any) -> Any:
    """Parsed Hydra element -> plain Python (QuotedString -> str, recursively)."""
    if isinstance(value, QuotedString):
        return value.text
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _is_primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def choice_key(value: Any) -> Any:
    """How a value is stored as an Optuna categorical choice: primitives as-is, lists and dicts
    as their override text (Optuna accepts only None/bool/int/float/str choices)."""
    return value if _is_primitive(value) else format_value(value)


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (1 and True differ, 1 and 1.0 match, nan matches nan)."""
    num = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, num) and isinstance(b, num):
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


# -- parsing ---------------------------------------------------------------------------------


def parse_overrides(lines: Sequence[str], source: str) -> List[Override]:
    """Parse override strings with Hydra's parser; errors name ``source``."""
    parser = OverridesParser.create()
    out = []
    for line in lines:
        try:
            out.append(parser.parse_override(line))
        except HydraException as e:
            raise ConfigError(f"{source}: cannot parse {line!r}: {e}") from None
    return out


def params_to_lines(params: Mapping[str, Any], prefix: str = "") -> List[str]:
    """``hydra.sweeper.params`` mapping -> override strings. Strings are override values
    (sweeps or fixed), other YAML values are fixed values, nested mappings are flattened
    (``{model: {width: ...}}`` is ``model.width``, what a command-line
    ``+hydra.sweeper.params.model.width=...`` creates)."""
    lines = []
    for key, value in params.items():
        if isinstance(value, Mapping):
            lines.extend(params_to_lines(value, f"{prefix}{key}."))
            continue
        text = value if isinstance(value, str) else format_value(value)
        lines.append(f"{prefix}{key}={text}")
    return lines


def _param_name(ov: Override) -> str:
    key = ov.key_or_group
    return key if ov.package is None else f"{key}@{ov.package}"


def _check_tags(tags, where: str, allowed=SUPPORTED_TAGS) -> None:
    unknown = sorted(set(tags) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown tag {unknown[0]!r}; supported tags: "
                          f"{', '.join(sorted(allowed)) or '(none here)'}")


def to_distribution(ov: Override, source: str = CLI) -> Tuple[BaseDistribution, Dict[str, str]]:
    """Map one sweep override to an Optuna distribution.

    Returns the distribution and, for categorical choices that are lists or dicts, a mapping
    choice -> override text (the choice is stored as that text). Raises ``ConfigError`` naming
    the key for unsupported forms (glob, unknown tags, descending or empty ranges).

    Example: ``x=range(1,5)`` -> ``IntDistribution(1, 4)``.
    """
    where = f"{source}: {ov.input_line or _param_name(ov)}"
    if ov.value_type == ValueType.GLOB_CHOICE_SWEEP or isinstance(ov._value, Glob):
        raise ConfigError(f"{where}: glob(...) is not supported by the coordsweep sweeper; "
                          "list the options with choice(a,b,...)")
    value = ov.value()
    if isinstance(value, ChoiceSweep):
        _check_tags(value.tags, where, allowed=())
        choices: List[Any] = []
        raw: Dict[str, str] = {}
        for item in value.list:
            item = _plain(item)
            key = choice_key(item)
            if any(_same(key, c) for c in choices):
                what = "appears twice" if _is_primitive(item) or key in raw else (
                    "is written like another choice that is a string")
                raise ConfigError(f"{where}: the value {item!r} {what}")
            if not _is_primitive(item):
                raw[key] = key
            choices.append(key)
        return CategoricalDistribution(choices), raw
    if isinstance(value, RangeSweep):
        _check_tags(value.tags, where)
        start, stop, step = value.start, value.stop, value.step
        if step is None or step <= 0 or start >= stop:
            raise ConfigError(f"{where}: only ascending ranges with a positive step are supported "
                              f"(got start={start}, stop={stop}, step={step}); "
                              f"range(a,b,s) is a, a+s, ... < b")
        values = list(value.range())  # Hydra's own enumeration
        if not values:
            raise ConfigError(f"{where}: the range is empty")
        log = "log" in value.tags
        if all(isinstance(x, int) and not isinstance(x, bool) for x in (start, stop, step)):
            if log and step != 1:
                raise ConfigError(f"{where}: tag(log, range(...)) needs step 1 (Optuna cannot "
                                  "combine a step with log scale)")
            if log and start < 1:
                raise ConfigError(f"{where}: tag(log, ...) needs a start >= 1 for ints")
            return IntDistribution(int(values[0]), int(values[-1]), log=log, step=int(step)), {}
        if log:
            raise ConfigError(f"{where}: tag(log, range(...)) is not supported for floats "
                              "(Optuna cannot combine a step with log scale); use "
                              "tag(log, interval(a,b))")
        low = Decimal(str(float(start)))
        dstep = Decimal(str(float(step)))
        high = low + dstep * (len(values) - 1)
        return FloatDistribution(float(low), float(high), step=float(dstep)), {}
    if isinstance(value, IntervalSweep):
        _check_tags(value.tags, where)
        log = "log" in value.tags
        start, end = value.start, value.end
        if isinstance(start, int) and isinstance(end, int):  # int(interval(a,b)): a <= x < b
            if end - 1 < start:
                raise ConfigError(f"{where}: int(interval({start},{end})) holds no integer "
                                  f"(Hydra intervals exclude the end)")
            if log and start < 1:
                raise ConfigError(f"{where}: tag(log, ...) needs a start >= 1 for ints")
            return IntDistribution(start, end - 1, log=log), {}
        start, end = float(start), float(end)
        if not start < end:
            raise ConfigError(f"{where}: interval(a,b) needs a < b (got {start}, {end})")
        if log and start <= 0:
            raise ConfigError(f"{where}: tag(log, interval(a,b)) needs a > 0 (got {start})")
        return FloatDistribution(start, end, log=log), {}
    raise ConfigError(f"{where}: not a sweep (a plain value is fixed for every trial)")


# -- the search space ------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One Optuna param: its name (the config key), how to write it back as an override."""
    name: str
    override_key: str
    distribution: BaseDistribution
    source: str
    text: str
    raw: Mapping[str, str] = field(default_factory=dict)

    def override(self, value: Any) -> str:
        if isinstance(value, str) and value in self.raw:
            return f"{self.override_key}={self.raw[value]}"
        return f"{self.override_key}={format_value(value)}"

    @property
    def finite_values(self) -> Optional[List[Any]]:
        """All values for discrete distributions, None for continuous ones."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return list(d.choices)
        if isinstance(d, IntDistribution):
            return list(range(d.low, d.high + 1, d.step))
        if isinstance(d, FloatDistribution) and d.step is not None:
            n = int(round((d.high - d.low) / d.step)) + 1
            low, step = Decimal(str(d.low)), Decimal(str(d.step))
            return [float(low + step * i) for i in range(n)]
        return None


@dataclass
class SearchSpace:
    """What a sweep samples, and how a trial's values become Hydra overrides.

    ``params`` are in sampling order; ``requires[name]`` maps a key to its allowed values
    (the param is sampled only when every key has an allowed value); ``context`` holds the
    values of non-sampled keys that conditions read (fixed overrides, config defaults).
    """
    params: List[Param] = field(default_factory=list)
    fixed: List[str] = field(default_factory=list)
    variants: Dict[str, List[str]] = field(default_factory=dict)
    variant_values: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    requires: Dict[str, Dict[str, List[Any]]] = field(default_factory=dict)
    why: Dict[str, str] = field(default_factory=dict)
    context: Dict[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> List[str]:
        return [p.name for p in self.params]

    def value_of(self, key: str, assignment: Mapping[str, Any]) -> Any:
        """Current value of ``key`` for a partial assignment (sampled > variant > fixed > default)."""
        if key in assignment:
            return assignment[key]
        variant = assignment.get(VARIANT)
        if variant is not None and key in self.variant_values.get(variant, {}):
            return choice_key(self.variant_values[variant][key])
        return choice_key(self.context.get(key))

    def applies(self, name: str, assignment: Mapping[str, Any]) -> bool:
        """Whether param ``name`` is sampled given the values chosen so far."""
        return all(any(_same(self.value_of(k, assignment), a) for a in allowed)
                   for k, allowed in self.requires.get(name, {}).items())

    def overrides(self, assignment: Mapping[str, Any]) -> List[str]:
        """Override strings of one trial: fixed ones, the variant's, then each sampled param's."""
        out = list(self.fixed)
        for p in self.params:
            if p.name not in assignment:
                continue
            if p.name == VARIANT and self.variants:
                out.extend(self.variants[assignment[p.name]])
            else:
                out.append(p.override(assignment[p.name]))
        return out

    def assignments(self) -> Optional[Iterator[Dict[str, Any]]]:
        """Every assignment of a finite space (define-by-run order), or None if continuous."""
        if any(p.finite_values is None for p in self.params):
            return None

        def walk(i: int, acc: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
            if i == len(self.params):
                yield dict(acc)
                return
            p = self.params[i]
            if not self.applies(p.name, acc):
                yield from walk(i + 1, acc)
                return
            for v in p.finite_values or []:
                acc[p.name] = v
                yield from walk(i + 1, acc)
            del acc[p.name]

        return walk(0, {})

    def size(self) -> Optional[int]:
        """Number of distinct configurations, None if continuous or above 100k."""
        it = self.assignments()
        if it is None:
            return None
        n = sum(1 for _ in itertools.islice(it, _MAX_ENUMERATE + 1))
        return None if n > _MAX_ENUMERATE else n

    @property
    def conditional(self) -> bool:
        return any(self.requires.values())

    def grid(self) -> Dict[str, List[Any]]:
        """Search space for Optuna's GridSampler (unconditional, discrete spaces only)."""
        if self.conditional:
            names = ", ".join(n for n, r in self.requires.items() if r)
            raise ConfigError(f"hydra.sweeper.sampler.name=grid cannot sample conditional params "
                              f"({names}): the grid would train identical configs; use "
                              f"sampler.name=bruteforce (or auto)")
        out = {}
        for p in self.params:
            values = p.finite_values
            if values is None:
                raise ConfigError(f"hydra.sweeper.sampler.name=grid needs discrete params; "
                                  f"{p.name} ({p.text}) is continuous: use choice(...) or range(...)")
            out[p.name] = values
        return out


def expand_ofat(base: Mapping[str, Any], factors: Mapping[str, Any],
                base_name: str = "default") -> Dict[str, Dict[str, Any]]:
    """One-factor-at-a-time variants: ``base``, then ``base`` with each factor value alone.

    Example: ``expand_ofat({"attention": "ca"}, {"attention.reduction": [8, 16]})`` ->
    ``{"default": {attention: ca}, "attention.reduction=8": {...}, "attention.reduction=16": {...}}``.
    """
    variants: Dict[str, Dict[str, Any]] = {base_name: dict(base)}
    for key, values in factors.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"hydra.sweeper.ofat.factors.{key}: give a non-empty list of values "
                              f"(got {values!r})")
        if key in base:
            raise ConfigError(f"hydra.sweeper.ofat: {key} is both in base and in factors")
        for value in values:
            name = f"{key}={format_value(value)}"
            if name in variants:
                raise ConfigError(f"hydra.sweeper.ofat.factors.{key}: {value!r} appears twice")
            variants[name] = {**base, key: value}
    return variants


class Groups:
    """Config groups and the fields of their options, as ``build_space`` asks for them.

    ``name in groups`` tells whether ``name`` is a config group; ``groups.fields(name, option)``
    lists the keys of that option's config (None when unknown: the param is then assumed to
    apply). This base class reads a plain dict ``{group: {option: [fields]}}``; the sweeper
    uses a subclass that composes the configs with Hydra.
    """

    def __init__(self, table: Optional[Mapping[str, Mapping[str, Optional[Sequence[str]]]]] = None):
        self.table = dict(table or {})

    def __contains__(self, group: str) -> bool:
        return group in self.table

    def fields(self, group: str, option: Any) -> Optional[Sequence[str]]:
        return self.table.get(group, {}).get(option)


def build_space(cli: Sequence[str] = (), params: Optional[Mapping[str, Any]] = None, *,
                variants: Optional[Mapping[str, Mapping[str, Any]]] = None,
                when: Optional[Mapping[str, Mapping[str, Any]]] = None,
                groups: Optional[Groups] = None,
                default: Optional[Callable[[str], Any]] = None) -> SearchSpace:
    """Combine command-line overrides, ``hydra.sweeper.params``, variants and conditions.

    Args:
        cli: task overrides from the command line (sweeps and fixed values).
        params: ``hydra.sweeper.params`` (key -> override value text or a YAML value).
        variants: named configs (name -> {key: value}); sampled as the param ``variant``.
        when: explicit conditions (param -> {key: [allowed values]}).
        groups: which names are config groups and the fields of their options (``Groups``).
        default: value of a key in the base config (group keys: the chosen option).

    Raises ``ConfigError`` when one key is both fixed and swept (in any two places), when a
    variant key is also set elsewhere, for unsupported syntax and for params that could never
    apply. A sweep on the command line replaces a sweep of the same key in params; a fixed
    value on the command line replaces one in params.
    """
    params = dict(params or {})
    variants = {str(k): dict(v) for k, v in (variants or {}).items()}
    when = dict(when or {})
    groups = groups if groups is not None else Groups()
    default = default or (lambda key: None)

    entries: Dict[str, Tuple[Override, str]] = {}
    for source, lines in ((PARAMS, params_to_lines(params)), (CLI, list(cli))):
        for ov in parse_overrides(lines, source):
            name = _param_name(ov)
            if ov.is_delete() and ov.is_sweep_override():
                raise ConfigError(f"{source}: {ov.input_line}: a deletion (~key) cannot be swept")
            prev = entries.get(name)
            if prev is not None and prev[1] != source:
                if prev[0].is_sweep_override() != ov.is_sweep_override():
                    fixed, swept = (prev, (ov, source)) if ov.is_sweep_override() else ((ov, source), prev)
                    raise ConfigError(
                        f"{name} is fixed to {fixed[0].get_value_string()!r} on {fixed[1]} but swept "
                        f"as {swept[0].get_value_string()!r} on {swept[1]}; a fixed value does not "
                        f"narrow a sweep. Either drop one of them, or sweep it on the command line "
                        f"(e.g. '{name}=choice({fixed[0].get_value_string()})')")
            entries[name] = (ov, source)

    variant_keys = sorted({k for v in variants.values() for k in v})
    if variants:
        if VARIANT in entries:
            raise ConfigError(f"'{VARIANT}' is the param holding the variant name; rename the "
                              f"config key {VARIANT!r} in {entries[VARIANT][1]}")
        for key in variant_keys:
            if key in entries:
                raise ConfigError(f"{key} is set by the variants (hydra.sweeper.variants/ofat) and "
                                  f"on {entries[key][1]} ({entries[key][0].input_line}); "
                                  f"a key is either part of the variants or set elsewhere")

    space = SearchSpace()
    fixed_values: Dict[str, Any] = {}
    swept: List[Param] = []
    if variants:
        swept.append(Param(VARIANT, VARIANT, CategoricalDistribution(list(variants)),
                           "hydra.sweeper.variants", "variants"))
        for name, values in variants.items():
            space.variants[name] = [f"{k}={format_value(v)}" for k, v in values.items()]
            space.variant_values[name] = values
    for name, (ov, source) in entries.items():
        if ov.is_sweep_override():
            dist, raw = to_distribution(ov, source)
            swept.append(Param(name, ov.get_key_element(), dist, source,
                               ov.get_value_string(), raw))
        else:
            space.fixed.append(ov.input_line or f"{ov.get_key_element()}={ov.get_value_element_as_str()}")
            if not ov.is_delete():
                fixed_values[name] = _plain(ov.value())
    by_name = {p.name: p for p in swept}

    for key, value in fixed_values.items():
        space.context[key] = value

    def context(key: str) -> Any:
        if key not in space.context:
            space.context[key] = default(key)
        return space.context[key]

    # conditions: config groups, then explicit `when`
    requires: Dict[str, Dict[str, List[Any]]] = {}
    why: Dict[str, str] = {}
    for p in swept:
        parts = p.name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            group = "/".join(parts[:i])
            if group not in groups:
                continue
            field_name = parts[i]
            reach = _reachable(group, by_name, variants, context) or []
            having = [o for o in reach if _has_field(groups.fields(group, o), field_name)]
            if not having:
                raise ConfigError(
                    f"{p.source}: {p.name} would never be sampled: no option of {group} used "
                    f"here ({', '.join(map(str, reach))}) has a field '{field_name}'")
            if len(having) < len(reach):
                requires.setdefault(p.name, {})[group] = having
                why[p.name] = (f"{p.name} applies only to {group} options with a field "
                               f"'{field_name}' ({', '.join(map(str, having))})")
            break
    for name, conds in when.items():
        if name not in by_name:
            raise ConfigError(f"hydra.sweeper.when.{name}: {name} is not a swept param "
                              f"(swept: {', '.join(by_name) or 'none'})")
        for key, allowed in dict(conds).items():
            allowed = list(allowed) if isinstance(allowed, (list, tuple)) else [allowed]
            allowed = [choice_key(a) for a in allowed]
            prev = requires.setdefault(name, {}).get(key)
            requires[name][key] = allowed if prev is None else [a for a in prev if a in allowed]
            why[name] = why.get(name, f"{name} applies only when") + f" {key} in {allowed}"

    # a condition that can never hold makes the param dead: refuse it
    for name, reqs in requires.items():
        for key, allowed in reqs.items():
            reach = _reachable(key, by_name, variants, context)
            if reach is not None and not any(any(_same(r, a) for a in allowed) for r in reach):
                src = ("swept: " if key in by_name else "") + ", ".join(map(str, reach))
                raise ConfigError(f"{by_name[name].source}: {name} would never be sampled: "
                                  f"{why.get(name, '')}; here {key} is {src}")
    # sampling order: variant, then a param after every swept key its conditions read
    deps = {p.name: {k for k in requires.get(p.name, {}) if k in by_name} for p in swept}
    ordered: List[Param] = []
    placed: set = set()
    pending = list(swept)
    while pending:
        ready = [p for p in pending if deps[p.name] <= placed]
        if not ready:
            raise ConfigError("hydra.sweeper.when: conditions form a cycle between "
                              + ", ".join(p.name for p in pending))
        p = ready[0]
        ordered.append(p)
        placed.add(p.name)
        pending.remove(p)
    space.params = ordered
    space.requires = {k: v for k, v in requires.items() if v}
    space.why = why
    return space


def _has_field(fields: Optional[Sequence[str]], name: str) -> bool:
    return fields is None or name in fields


def _reachable(key: str, by_name: Mapping[str, Param], variants: Mapping[str, Mapping[str, Any]],
               context: Callable[[str], Any]) -> Optional[List[Any]]:
    """Values ``key`` can take in this sweep (None: too many to list)."""
    if key in by_name:
        return by_name[key].finite_values
    if variants and any(key in v for v in variants.values()):
        vals = [choice_key(v[key]) for v in variants.values() if key in v]
        if any(key not in v for v in variants.values()):
            vals.append(choice_key(context(key)))
        return list(dict.fromkeys(vals))
    return [choice_key(context(key))]


# -- sampling --------------------------------------------------------------------------------


def suggest(trial: Any, space: SearchSpace) -> Dict[str, Any]:
    """Sample the params of ``space`` on an Optuna trial, define-by-run, skipping params whose
    conditions do not hold. Returns {param name: value} (choices as stored by Optuna)."""
    assignment: Dict[str, Any] = {}
    for p in space.params:
        if not space.applies(p.name, assignment):
            continue
        d = p.distribution
        if isinstance(d, CategoricalDistribution):
            value = trial.suggest_categorical(p.name, list(d.choices))
        elif isinstance(d, IntDistribution):
            value = trial.suggest_int(p.name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, FloatDistribution):
            value = trial.suggest_float(p.name, d.low, d.high, step=d.step, log=d.log)
        else:  # pragma: no cover - to_distribution makes only these three
            raise TypeError(f"unsupported distribution {d!r}")
        assignment[p.name] = value
    return assignment


def check_assignment(space: SearchSpace, values: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """Validate a named config (``enqueue``) against the space; returns Optuna param values.

    Every key must be a param, every value inside its distribution, and no param may be given
    whose conditions do not hold for the other values.
    """
    out: Dict[str, Any] = {}
    names = space.names
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: {key} is not a swept param (swept: {', '.join(names) or 'none'})")
        p = space.param(key)
        v = choice_key(value)
        d = p.distribution
        if isinstance(d, CategoricalDistribution):
            ok = any(_same(v, c) for c in d.choices)
        else:
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool)
                  and d._contains(d.to_internal_repr(v)))
        if not ok:
            raise ConfigError(f"{where}: {key}={value!r} is outside its sweep {p.text}")
        out[key] = v
    for p in space.params:
        if p.name in out and not space.applies(p.name, out):
            raise ConfigError(f"{where}: {p.name} is given but {space.why.get(p.name, 'its condition does not hold')}")
    return out
