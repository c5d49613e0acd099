import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from imbalance_sweep.errors import ConfigError
from imbalance_sweep.search_space import override_for, parse_search_space, suggest


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("choice(ce, focal)", CategoricalDistribution(("ce", "focal"))),
        ("choice(1, 2.5, true)", CategoricalDistribution((1, 2.5, True))),
        # Hydra's range excludes stop: range(1, 10, 2) is 1, 3, 5, 7, 9.
        ("range(1, 10, 2)", IntDistribution(1, 9, step=2)),
        ("range(1, 9, 2)", IntDistribution(1, 7, step=2)),
        ("range(5)", IntDistribution(0, 4)),
        ("range(10, 0, -3)", IntDistribution(1, 10, step=3)),  # 10, 7, 4, 1
        ("range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
        ("range(0.0, 1.0, 0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
        # interval bounds are both included, as Optuna samples them
        ("interval(0, 20)", FloatDistribution(0.0, 20.0)),
        ("interval(0.5, 3.0)", FloatDistribution(0.5, 3.0)),
        ("int(interval(2, 8))", IntDistribution(2, 8)),
        ("tag(log, interval(1e-4, 1e-1))", FloatDistribution(1e-4, 1e-1, log=True)),
        ("tag(log, int(interval(16, 256)))", IntDistribution(16, 256, log=True)),
    ],
)
def test_expression_to_distribution(expression, expected):
    space = parse_search_space({"optim.lr": expression})
    assert len(space.parameters) == 1
    assert space.parameters[0].distribution == expected


@pytest.mark.parametrize(("key", "value"), [("seed", 3), ("trainer.amp", False), ("loss", "focal"), ("augment.rotation", 1.5)])
def test_plain_values_become_fixed_overrides(key, value):
    space = parse_search_space({key: value})
    assert space.parameters == ()
    assert len(space.fixed_overrides) == 1


def test_fixed_override_text():
    assert parse_search_space({"trainer.amp": False}).fixed_overrides == ("trainer.amp=false",)


def test_groups_sampled_first():
    space = parse_search_space({"loss.gamma": "interval(0, 2)", "loss": "choice(ce, focal)", "resample": "choice(none, smote)"})
    assert [p.key for p in space.parameters] == ["loss", "resample", "loss.gamma"]


@pytest.mark.parametrize(
    "expression",
    ["range(5, 1)", "range(0.5, 0.1, 0.1)", "glob(*)", "choice([1,2],[3])", "interval(0,", "tag(log, interval(0, 1e-2))", "interval(2, 1)", "choice(null, 1)"],
)
def test_invalid_expressions_rejected(expression):
    with pytest.raises(ConfigError):
        parse_search_space({"optim.lr": expression})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("focal", "k=focal"),
        (0.25, "k=0.25"),
        (3, "k=3"),
        (True, "k=true"),
        (None, "k=null"),
        ("a b", "k='a b'"),
        ("true", "k='true'"),  # a string that would parse as a bool stays a string
        ("it's", "k='it\\'s'"),
    ],
)
def test_override_for_table(value, expected):
    assert override_for("k", value) == expected


def test_sampled_values_respect_range_stop():
    space = parse_search_space({"trainer.batch_size": "range(8, 40, 8)"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        seen.add(suggest(trial, space.parameters[0]))
        study.tell(trial, 0.0)
    assert seen == {8, 16, 24, 32}

