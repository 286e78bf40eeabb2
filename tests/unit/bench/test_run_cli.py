"""`python -m bench.run` is a typer command like `outbox`: its options, checked up front."""

from __future__ import annotations

from typer.testing import CliRunner

from bench.run import app


def test_the_bench_command_lists_its_options() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for option in (
        "--repetitions",
        "--window-seconds",
        "--concurrency",
        "--latency-seconds",
        "--relay-batch",
        "--scale",
        "--stage",
        "--out",
        "--data-dir",
    ):
        assert option in result.output
    assert "--profile" in result.output


def test_profiling_without_a_data_dir_is_refused_before_anything_starts() -> None:
    result = CliRunner().invoke(app, ["--profile", "relay"])
    assert result.exit_code == 2
    assert "--profile needs --data-dir" in result.output


def test_unknown_services_and_nonsense_counts_are_refused() -> None:
    assert CliRunner().invoke(app, ["--profile", "kafka", "--data-dir", "/tmp/x"]).exit_code == 2
    assert CliRunner().invoke(app, ["--repetitions", "0"]).exit_code == 2
    assert CliRunner().invoke(app, ["--stage", "kafka"]).exit_code == 2
