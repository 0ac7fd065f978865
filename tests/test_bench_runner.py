import pytest

from lightning_bet.bench.runner import HEADLINES, headline_rows, run_benchmarks


def test_headline_rows_show_every_figure_and_whether_its_target_is_met():
    rows = headline_rows("flip_overhead", {"ratio_p0.01": 1.02, "ratio_p0.1": 1.0812})
    assert rows == [
        "| flip_overhead | flip-training step / plain step, p=0.01 | 1.020 | <= 1.03 | yes |",
        "| flip_overhead | flip-training step / plain step, p=0.1 | 1.081 | <= 1.08 | no |",
    ]
    sweep = headline_rows("sweep_speedup", {"speedup": 7.9, "identical": True})
    assert sweep[0].endswith("| 7.900 | >= 8 | no |")
    assert sweep[1].endswith("| true | == true | yes |")
    assert headline_rows("sweep_speedup", {"speedup": 9, "identical": False})[1].endswith("| no |")
    missing = headline_rows("c_kernel", {})
    assert missing == ["| c_kernel | C kernel / popcount peak | null | >= 0.50 | no |"]
    assert headline_rows("metric_cost", {"ratio": 1.0, "hook_share": 0.05})[1].endswith("|  |  |")


def test_every_benchmark_has_headlines_and_unknown_names_are_refused():
    from lightning_bet.bench import BENCHMARKS, OPTIONAL_BENCHMARKS

    assert set(HEADLINES) == set(BENCHMARKS) | set(OPTIONAL_BENCHMARKS)
    with pytest.raises(
        ValueError, match=r"Expected benchmark names among \[.*\], but got \['nope'\]"
    ):
        run_benchmarks(["nope"], "unused")
