import json
import re

import numpy as np
import pytest

from lightning_bet.reproduce import cli_main, reproduce
from lightning_bet.reproduce.claims import ModelRecord, analyze, claim_c1, claim_c5
from lightning_bet.reproduce.models import ModelSpec, build_model_set
from lightning_bet.reproduce.run import BET_AREA_GRID, bet_area

TINY = [
    "--dataset",
    "digits",
    "--seeds",
    "2",
    "--methods",
    "plain,hirtzlin,straight_through,margin",
    "--train-rates",
    "0.1",
    "--lambdas",
    "1",
    "--epochs",
    "1",
    "--flip-epochs",
    "2",
    "--error-rates",
    "0.0001,0.04",
    "--realizations",
    "2",
    "--no-progress",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    first = cli_main([*TINY, "--out", str(out)])
    return out, first


def test_end_to_end_report_has_every_claim_with_a_verdict(tiny_run):
    out, first = tiny_run
    assert set(first["statuses"].values()) == {"trained"}
    assert len(first["statuses"]) == 8  # 2 seeds x (plain, hirtzlin, straight-through, margin)
    text = (out / "report.md").read_text()
    for key in ("C1", "C2", "C3", "C4", "C5"):
        match = re.search(rf"^## {key}: (.+)$", text, flags=re.M)
        assert match is not None, key
        assert match.group(1) in ("supported", "not supported", "inconclusive")
    for png in ("accuracy_vs_error_rate.png", "metric_vs_bet_area.png", "lambda_tradeoff.png"):
        assert (out / png).stat().st_size < 200_000
    claims = json.loads((out / "claims.json").read_text())
    assert [c["key"] for c in claims["claims"]] == ["C1", "C2", "C3", "C4", "C5"]
    result = json.loads((out / "models" / "hirtzlin-p0.1-s1" / "result.json").read_text())
    assert len(result["accuracy"]) == len(result["error_rates"])
    assert len(result["accuracy"][0]) == 2
    assert set(BET_AREA_GRID) <= set(result["error_rates"])
    # same fault maps for every model: a model's sweep is reproducible from its checkpoint
    assert result["accuracy_mean"][0] == pytest.approx(result["clean_accuracy"])


def test_second_invocation_skips_finished_models(tiny_run):
    out, first = tiny_run
    before = {p.parent.name: p.stat().st_mtime_ns for p in (out / "models").glob("*/model.ckpt")}
    old = json.loads((out / "claims.json").read_text())
    (out / "models" / "plain-s0" / "result.json").unlink()  # interrupted after training
    second = cli_main([*TINY, "--out", str(out)])
    assert second["statuses"].pop("plain-s0") == "evaluated"
    assert set(second["statuses"].values()) == {"skipped"}
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "models").glob("*/model.ckpt")}
    assert after == before  # nothing retrained
    log = json.loads((out / "invocations.json").read_text())
    assert [entry["models"] for entry in log] == [{"trained": 8}, {"evaluated": 1, "skipped": 7}]
    # re-evaluating from the checkpoint gives the same numbers (same weights, same fault maps)
    # (and a changed training setting retrains instead of reusing a checkpoint)
    assert [(c["verdict"], c["rows"]) for c in old["claims"]] == [
        (c.verdict, c.rows) for c in second["claims"]
    ]
    args = [a if a != "plain,hirtzlin,straight_through,margin" else "plain" for a in TINY]
    third = cli_main(
        [
            *args[: args.index("--epochs") + 1],
            "2",
            *args[args.index("--epochs") + 2 :],
            "--out",
            str(out),
        ]
    )
    assert third["statuses"] == {"plain-s0": "trained", "plain-s1": "trained"}


def _record(method, seed, accuracy, area=0.8, metric=0.9, **kw):
    rates = (0.0, 1e-4, 1e-3, 0.04)
    return ModelRecord(
        method,
        "",
        seed,
        kw.get("p_train"),
        kw.get("lam"),
        rates,
        np.asarray(accuracy, dtype=np.float64),
        area,
        metric,
        0.1,
        1.0,
        1,
    )


def test_c1_judges_small_loss_against_one_point():
    # loss of 0.1 point at both rates, tight across seeds: below 1 point -> supported
    small = [
        _record("plain", s, [0.95 + s / 100, 0.949 + s / 100, 0.949 + s / 100, 0.5])
        for s in range(3)
    ]
    assert claim_c1(small, 10_000).verdict == "supported"
    big = [
        _record("plain", s, [0.95 + s / 100, 0.90 + s / 100, 0.80 + s / 100, 0.5]) for s in range(3)
    ]
    assert claim_c1(big, 10_000).verdict == "not supported"
    one_seed = claim_c1(small[:1], 10_000)
    assert one_seed.verdict == "inconclusive" and "at least 2 seeds" in one_seed.notes[0]


def test_c5_effect_below_resolution_is_inconclusive():
    plain = [
        _record("plain", s, [0.950 + s / 1000, 0, 0, 0], area=0.800 + s / 1000) for s in range(3)
    ]
    margin = [
        _record("margin", s, [0.948 + s / 1000, 0, 0, 0], area=0.803 + s / 1000, lam=1.0)
        for s in range(3)
    ]
    # consistent across seeds, but 0.2-0.3 points on 360 samples is below the resolution
    assert claim_c5(plain + margin, 360).verdict == "inconclusive"
    assert claim_c5(plain + margin, 1_000_000).verdict == "supported"
    assert len(analyze(plain + margin, 360)) == 5


def test_bet_area_uses_the_method_grid():
    rates = sorted({*BET_AREA_GRID, 0.3})
    acc = [1.0 if p <= 0.1 else 0.0 for p in rates]
    assert bet_area(rates, acc) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"Expected `error_rates` to contain the BET-area grid"):
        bet_area([0.0, 0.1], [1.0, 1.0])


def test_model_set_shape_and_names():
    specs = build_model_set(3)
    assert len(specs) == 3 * (1 + 3 + 3 + 3 + 1)
    assert {s.name for s in specs} >= {"plain-s0", "hirtzlin-p0.3-s2", "margin-lam0.3-s1"}
    flip = [s for s in specs if s.p_train is not None]
    assert all(s.epochs == 120 for s in flip) and all(s.p_train in (0.05, 0.15, 0.3) for s in flip)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"dataset": "cifar"},
            "Expected `dataset` to be one of ['digits', 'mnist', 'fashion_mnist'], but got 'cifar'",
        ),
        ({"seeds": 0}, "Expected `seeds` to be an int >= 1, but got 0"),
        ({"realizations": 0}, "Expected `realizations` to be an int >= 1, but got 0"),
        ({"methods": ["plain", "dropout"]}, "Expected `methods` to be a non-empty subset of"),
        (
            {"train_rates": [0.0]},
            "Expected `train_rates` to hold floats in (0, 0.5], but got [0.0]",
        ),
        ({"lambdas": [-1.0]}, "Expected `lambdas` to hold finite floats > 0, but got [-1.0]"),
        ({"error_rates": [1.5]}, "Expected `error_rates` to hold floats in [0, 1], but got [1.5]"),
        ({"epochs": 0}, "Expected `epochs` to be an int >= 1, but got 0"),
        ({"threads": 0}, "Expected `threads` to be an int >= 1, but got 0"),
    ],
)
def test_bad_input(tmp_path, kwargs, message):
    args = {"dataset": "digits", "out": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        reproduce(**args)
    assert not (tmp_path / "models").exists()


def test_bad_cli_list(capsys):
    with pytest.raises(SystemExit, match="2"):
        cli_main(["--dataset", "digits", "--out", "unused", "--lambdas", "0.1,x"])
    assert (
        "argument --lambdas: expected comma-separated numbers, but got '0.1,x'"
        in capsys.readouterr().err
    )


def test_spec_validation():
    with pytest.raises(ValueError, match="Expected `p_train` exactly for flip training"):
        ModelSpec("plain", 0, 1, p_train=0.1)


@pytest.mark.parametrize(
    ("dataset", "module"),
    [("mnist", "MNISTDataModule"), ("fashion_mnist", "FashionMNISTDataModule")],
)
def test_standard_datasets_configure_their_datamodules(tmp_path, dataset, module):
    from lightning_bet.reproduce.models import DATASETS
    from lightning_bet.reproduce.run import _build, _quiet

    spec = ModelSpec("hirtzlin", 2, 200, p_train=0.3)
    with _quiet():
        cli = _build(spec, DATASETS[dataset], tmp_path, str(tmp_path / "files"))
    assert type(cli.datamodule).__name__ == module
    assert cli.datamodule.data_dir == tmp_path / "files" or str(cli.datamodule.data_dir) == str(
        tmp_path / "files"
    )
    assert cli.trainer.max_epochs == 200 and cli.model.hparams.lr_step_size == 50
    assert tuple(cli.model.hparams.input_shape) == (1, 28, 28)


def test_c2_c3_detect_a_dip_only_in_hirtzlin():
    from lightning_bet.reproduce.claims import claim_c2, claim_c3

    rates = (0.0, 0.04, 0.1)

    def rec(method, seed, acc, p_train=None):
        return ModelRecord(
            method, "", seed, p_train, None, rates, np.asarray(acc), 0.8, 0.9, 0.1, 1.0, 1
        )

    noise = [0.0, 0.002, -0.002]
    records = []
    for s, e in enumerate(noise):
        records.append(rec("plain", s, [0.95 + e, 0.80 + e, 0.50 + e]))
        # Hirtzlin at 0.1: 5 points better at 0.1 than clean (a dip below the training rate)
        records.append(rec("hirtzlin", s, [0.85 + e, 0.88 + e, 0.90 + e], p_train=0.1))
        # straight-through at 0.1: flat, no dip
        records.append(rec("straight_through", s, [0.92 + e, 0.92 + e, 0.91 - e], p_train=0.1))
    c2 = claim_c2(records, 10_000)
    assert c2.verdict == "supported"
    assert c2.rows[0]["value"].startswith("+8.00 pt")  # 0.88 - 0.80 at p = 0.04
    c3 = claim_c3(records, 10_000)
    assert c3.verdict == "supported"
    assert c3.rows[0]["value"].startswith("+6.")  # dips +5 pt vs -1 pt (seed noise aside)
    # straight-through with the same dip as Hirtzlin: no difference to support C3
    same = [r for r in records if r.method != "straight_through"] + [
        rec("straight_through", s, [0.85 + e, 0.88 + e, 0.90 + e], p_train=0.1)
        for s, e in enumerate(noise)
    ]
    assert claim_c3(same, 10_000).verdict == "inconclusive"  # zero difference: below resolution
