"""Search-space parsing (sweep.sweeper.params): Hydra override syntax -> Optuna distributions,
values -> override text, conflicts, conditional params, OFAT variants. No Hydra app needed."""
from __future__ import annotations

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search_space.config import ATTENTION_SCHEMAS, ConfigError
from sweep.sweeper.params import (VARIANT, Groups, build_space, check_assignment, expand_ofat,
                                  format_value, parse_overrides, suggest, to_distribution)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def dist(line: str):
    return to_distribution(parse_overrides([line], "test")[0])


@pytest.mark.parametrize("line, expected", [
    ("x=choice(a,b,c)", CategoricalDistribution(["a", "b", "c"])),
    ("x=a,b,c", CategoricalDistribution(["a", "b", "c"])),
    ("x=shuffle(1,2,3)", CategoricalDistribution([1, 2, 3])),
    ("x=sort(3,1,2)", CategoricalDistribution([1, 2, 3])),
    ("x=choice(1)", CategoricalDistribution([1])),
    ("x=choice(true,abc,1.5)", CategoricalDistribution([True, "abc", 1.5])),
    # Hydra's range excludes the end, like Python's (the old optuna sweeper included it)
    ("x=range(1,5)", IntDistribution(1, 4)),
    ("x=range(0,10,3)", IntDistribution(0, 9, step=3)),
    ("x=range(1,10,4)", IntDistribution(1, 9, step=4)),
    ("x=range(0,1,0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
    ("x=range(0.1,0.5,0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
    ("x=range(0,10,3.3)", FloatDistribution(0.0, 9.9, step=3.3)),
    ("x=tag(log,range(1,100))", IntDistribution(1, 99, log=True)),
    ("x=interval(1,5)", FloatDistribution(1.0, 5.0)),
    ("x=interval(0.5,2.5)", FloatDistribution(0.5, 2.5)),
    # Hydra: interval(a,b) is a <= x < b, so int(interval(1,5)) is 1..4
    ("x=int(interval(1,5))", IntDistribution(1, 4)),
    ("x=tag(log,interval(1e-4,1))", FloatDistribution(1e-4, 1.0, log=True)),
    ("x=tag(log,int(interval(1,100)))", IntDistribution(1, 99, log=True)),
    ("x=float(range(1,3))", FloatDistribution(1.0, 2.0, step=1.0)),
])
def test_distribution_table(line, expected):
    got, raw = dist(line)
    assert got == expected
    assert raw == {}


def test_list_and_dict_choices_are_stored_as_override_text():
    got, raw = dist("x=choice([1,2,3],[5,6,7],{a:1})")
    assert got == CategoricalDistribution(["[1,2,3]", "[5,6,7]", "{a:1}"])
    assert raw == {"[1,2,3]": "[1,2,3]", "[5,6,7]": "[5,6,7]", "{a:1}": "{a:1}"}


@pytest.mark.parametrize("line, message", [
    ("x=glob(*)", "glob(...) is not supported"),
    ("x=tag(foo,interval(0,1))", "unknown tag 'foo'"),
    ("x=tag(log,choice(1,2))", "unknown tag 'log'"),
    ("x=range(5,1)", "only ascending ranges"),
    ("x=range(5,1,-1)", "only ascending ranges"),
    ("x=range(3,3)", "only ascending ranges"),
    ("x=tag(log,range(1,10,2))", "needs step 1"),
    ("x=tag(log,range(0.1,1,0.1))", "not supported for floats"),
    ("x=tag(log,interval(0,1))", "needs a > 0"),
    ("x=int(interval(3,3))", "holds no integer"),
    ("x=interval(2,1)", "needs a < b"),
    ("x=choice(1,1)", "appears twice"),
    ("x=choice('[1]',[1])", "written like another choice"),
])
def test_unsupported_forms_raise_clear_errors(line, message):
    with pytest.raises(ConfigError, match=None) as err:
        dist(line)
    assert message in str(err.value)
    assert "x=" in str(err.value)


def test_parse_error_names_the_source():
    with pytest.raises(ConfigError, match=r"hydra.sweeper.params: cannot parse 'x=choice\(1,'"):
        build_space([], {"x": "choice(1,"})


@pytest.mark.parametrize("value", [
    "plain", "a,b", "it's", 'say "hi"', "back\\slash", "back\\'quote", "8", "1.5", "true", "null",
    "nan", "x y", "a=b", "(paren)", "[1,2]", "{a:1}", "", "ünïcode",
    0, -3, 1.5, 1e-05, 1e30, True, False, None, [1, "a,b", [2.5]], {"k": "v w", "n": [1]},
])
def test_format_value_round_trips_through_hydra(value):
    text = format_value(value)
    parsed = OverridesParser.create().parse_override(f"key={text}")
    assert not parsed.is_sweep_override()
    got = parsed.value()
    assert got == value and type(got) is type(value)


def test_string_choices_with_commas_and_quotes_reach_the_job_intact():
    space = build_space(["x=choice('a,b',\"it's\",plain)"])
    p = space.param("x")
    for value in ("a,b", "it's", "plain"):
        line = p.override(value)
        assert OverridesParser.create().parse_override(line).value() == value
    assert space.overrides({"x": "a,b"}) == ["x='a,b'"]


def test_fixed_and_swept_on_the_same_key_is_an_error_both_ways():
    with pytest.raises(ConfigError) as err:
        build_space(["attention.reduction=16"], {"attention.reduction": "choice(8,16,32)"})
    msg = str(err.value)
    assert "attention.reduction is fixed to '16' on the command line" in msg
    assert "swept as 'choice(8,16,32)' on hydra.sweeper.params" in msg
    assert "attention.reduction=choice(16)" in msg
    with pytest.raises(ConfigError, match="fixed to '16' on hydra.sweeper.params but swept"):
        build_space(["attention.reduction=8,16"], {"attention.reduction": 16})


def test_command_line_replaces_params_of_the_same_kind():
    space = build_space(["x=choice(1,2)", "y=5"], {"x": "range(0,10)", "y": 3, "z": "a,b"})
    assert space.names == ["x", "z"]
    assert space.param("x").distribution == CategoricalDistribution([1, 2])
    assert space.fixed == ["y=5"]
    # one-value choice fixes a key the params sweep
    assert build_space(["x=choice(4)"], {"x": "range(0,10)"}).param("x").finite_values == [4]


def test_variant_keys_cannot_be_set_elsewhere():
    variants = {"se": {"attention": "se"}, "ca": {"attention": "ca"}}
    with pytest.raises(ConfigError, match="attention is set by the variants"):
        build_space(["attention=ca"], variants=variants)
    with pytest.raises(ConfigError, match="'variant' is the param holding the variant name"):
        build_space(["variant=1,2"], variants=variants)
    space = build_space(["seed=choice(0,1)"], variants=variants)
    assert space.names == [VARIANT, "seed"]
    assert space.overrides({VARIANT: "se", "seed": 1}) == ["attention=se", "seed=1"]
    assert space.size() == 4


def test_ofat_is_base_plus_each_factor_alone_not_the_cross_product():
    v = expand_ofat({"attention": "ca"}, {"attention.reduction": [8, 16, 64],
                                          "attention.pool": ["max", "gem"],
                                          "attention.stages": [[2, 3, 4]]}, "paper")
    assert list(v) == ["paper", "attention.reduction=8", "attention.reduction=16",
                       "attention.reduction=64", "attention.pool=max", "attention.pool=gem",
                       "attention.stages=[2,3,4]"]
    assert v["attention.pool=gem"] == {"attention": "ca", "attention.pool": "gem"}
    space = build_space([], variants=v)
    assert space.size() == 7 and space.grid() == {VARIANT: list(v)}
    assert space.overrides({VARIANT: "attention.stages=[2,3,4]"}) == [
        "attention=ca", "attention.stages=[2,3,4]"]
    with pytest.raises(ConfigError, match="give a non-empty list"):
        expand_ofat({}, {"x": 5})
    with pytest.raises(ConfigError, match="both in base and in factors"):
        expand_ofat({"x": 1}, {"x": [2]})


# the real attention schemas decide which params are conditional
GROUPS = Groups({"attention": {k: list(s.__dataclass_fields__) for k, s in ATTENTION_SCHEMAS.items()}})
DEFAULT = {"attention": "ca"}.get


def test_group_fields_make_ca_only_params_conditional():
    space = build_space(["attention=none,se,ca", "attention.pool=avg,max",
                         "attention.reduction=8,16", "attention.position=post_dw,post_add"],
                        groups=GROUPS, default=DEFAULT)
    assert space.names[0] == "attention"  # sampled first: the others depend on it
    assert space.requires["attention.pool"] == {"attention": ["ca"]}
    assert space.requires["attention.reduction"] == {"attention": ["se", "ca"]}
    # position is a field of every kind, so it is always sampled
    assert "attention.position" not in space.requires
    # none: 2 positions; se: 2 x 2 reductions; ca: 2 x 2 x 2 pools
    assert space.size() == 2 + 4 + 8
    assert space.overrides({"attention": "se", "attention.reduction": 8}) == [
        "attention=se", "attention.reduction=8"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        t = study.ask()
        a = suggest(t, space)
        study.tell(t, 0.0)
        assert set(t.params) == set(a)
        if a["attention"] != "ca":
            assert "attention.pool" not in a
        if a["attention"] == "none":
            assert "attention.reduction" not in a
        seen.add(a["attention"])
    assert seen == {"none", "se", "ca"}


def test_param_that_never_applies_is_refused():
    with pytest.raises(ConfigError, match=r"attention.pool would never be sampled: .*\(se\) "
                                          r"has a field 'pool'"):
        build_space(["attention=se", "attention.pool=avg,max"], groups=GROUPS, default=DEFAULT)
    with pytest.raises(ConfigError, match="attention.pool would never be sampled"):
        build_space(["attention.pool=avg,max"], groups=GROUPS, default={"attention": "eca"}.get)
    # the default option of the group (here ca) has the field: always sampled
    assert build_space(["attention.pool=avg,max"], groups=GROUPS, default=DEFAULT).requires == {}


def test_when_conditions_and_ordering():
    space = build_space(["attention.gem_p=interval(1,6)", "attention.pool=avg,gem"],
                        when={"attention.gem_p": {"attention.pool": ["gem"]}},
                        groups=GROUPS, default=DEFAULT)
    assert space.names == ["attention.pool", "attention.gem_p"]
    assert space.applies("attention.gem_p", {"attention.pool": "gem"})
    assert not space.applies("attention.gem_p", {"attention.pool": "avg"})
    with pytest.raises(ConfigError, match="is not a swept param"):
        build_space(["x=1,2"], when={"y": {"x": [1]}})
    with pytest.raises(ConfigError, match="would never be sampled"):
        build_space(["x=1,2", "y=3,4"], when={"y": {"x": [5]}})
    with pytest.raises(ConfigError, match="form a cycle"):
        build_space(["x=1,2", "y=3,4"], when={"y": {"x": [1]}, "x": {"y": [3]}})


def test_grid_refuses_conditional_or_continuous_spaces():
    with pytest.raises(ConfigError, match="use sampler.name=bruteforce"):
        build_space(["attention=se,ca", "attention.pool=avg,max"], groups=GROUPS,
                    default=DEFAULT).grid()
    with pytest.raises(ConfigError, match="needs discrete params; x"):
        build_space(["x=interval(0,1)"]).grid()
    assert build_space(["x=interval(0,1)"]).size() is None


def test_check_assignment_for_enqueued_configs():
    space = build_space(["attention=se,ca", "attention.pool=avg,max",
                         "attention.stages=choice([1,2,3,4,5,6,7],[5,6,7])", "lr=interval(0.01,1)"],
                        groups=GROUPS, default=DEFAULT)
    got = check_assignment(space, {"attention": "ca", "attention.pool": "max",
                                   "attention.stages": [5, 6, 7], "lr": 0.1}, "enqueue.p")
    assert got == {"attention": "ca", "attention.pool": "max", "attention.stages": "[5,6,7]",
                   "lr": 0.1}
    with pytest.raises(ConfigError, match="enqueue.p: attention.pool='gem' is outside its sweep"):
        check_assignment(space, {"attention.pool": "gem"}, "enqueue.p")
    with pytest.raises(ConfigError, match="enqueue.p: lr=2 is outside"):
        check_assignment(space, {"lr": 2}, "enqueue.p")
    with pytest.raises(ConfigError, match="enqueue.p: seed is not a swept param"):
        check_assignment(space, {"seed": 1}, "enqueue.p")
    with pytest.raises(ConfigError, match="attention.pool is given but attention.pool applies only"):
        check_assignment(space, {"attention": "se", "attention.pool": "avg"}, "enqueue.p")


def test_prefixed_keys_keep_their_prefix_in_overrides():
    space = build_space(["+extra=choice(1,2)", "~dropme"])
    assert space.names == ["extra"]
    assert space.overrides({"extra": 2}) == ["~dropme", "+extra=2"]


def test_nested_params_are_flattened_to_dotted_keys():
    space = build_space([], {"model": {"width": "choice(0.5,1.0)", "dropout": 0.2}, "seed": "0,1"})
    assert space.names == ["model.width", "seed"]
    assert space.fixed == ["model.dropout=0.2"]
