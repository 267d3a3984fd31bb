"""``slt-jax``: the README's first command prints an estimate next to its truth; ``bench`` runs
the local-sampling benchmark; help is plain text and bad arguments fail with one line."""

import argparse
import json
import re

import pytest

from slt_jax import benchmark, cli

# the demo and bench tests reuse each other's compiled programs: keep them on one worker
pytestmark = pytest.mark.xdist_group("cli")


def test_demo_prints_estimate_and_truth(capsys):
    code = cli.main(
        ["demo", "--widths", "5", "4", "6", "--num-samples", "2000", "--num-draws", "1000",
         "--quiet", "--no-cache"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "compilation cache: off (--no-cache)" in out
    assert "sampler         : sghmc" in out
    estimate = float(re.search(r"estimated LLC\s*:\s*([-\d.]+)", out).group(1))
    truth = float(re.search(r"true λ \(Aoyagi\)\s*:\s*([-\d.]+)", out).group(1))
    error = float(re.search(r"relative error\s*:\s*([-+\d.]+)%", out).group(1))
    assert abs(100 * (estimate / truth - 1) - error) < 0.1  # the printed error is the ratio's
    assert abs(error) < 25  # a short run of a small network: loose, but catches a broken demo


def test_demo_says_where_it_caches_compilations(monkeypatch, capsys, tmp_path):
    # the real call would switch JAX's persistent cache on for the rest of the test session
    import slt_jax

    monkeypatch.setattr(slt_jax, "enable_compilation_cache", lambda: str(tmp_path))
    parser = cli._build_parser()
    cli._use_cache(parser.parse_args(["demo"]))
    assert capsys.readouterr().out.strip() == (
        f"compilation cache: {tmp_path} (--no-cache to disable)"
    )


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["bench", "--help"]])
def test_help_is_plain_text(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: slt-jax")
    for markup in ("``", ":func:", ":mod:", ":math:", ".. math", ".. code"):
        assert markup not in text
    if argv != ["--help"]:  # every option says what it does and its default
        command = cli._build_parser()._subparsers._group_actions[0].choices[argv[0]]
        options = [a for a in command._actions if not isinstance(a, argparse._HelpAction)]
        assert len(options) >= 5
        for action in options:
            assert action.help and "(default: " in action.help, action.option_strings
            assert action.option_strings[0] in text
    assert ("compilation cache" in text) == (argv != ["--help"])


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        ([], "choose a command"),
        (["bench", "--size", "huge"], "invalid choice: 'huge'"),
        (["bench", "--samplers", "nuts"], "invalid choice: 'nuts'"),
        (["bench", "--seed", "-1"], "expected an integer >= 0"),
        (["bench", "--json", "/nonexistent-directory/bench.json"], "does not exist"),
        (["demo", "--widths", "5"], "at least two widths"),
        (["demo", "--widths", "5", "0", "4"], "expected a positive integer, got '0'"),
        (["demo", "--num-draws", "many"], "expected a positive integer, got 'many'"),
        (["demo", "--num-samples", "1"], "--num-samples must be at least 2"),
    ],
)
def test_bad_arguments_fail_with_one_line(argv, reason, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and reason in lines[0], captured.err


def test_bench_tiny_end_to_end(capsys, tmp_path):
    # after the demo test above this reuses its compiled programs ([5, 4, 6], n = 2000, 4 chains)
    path = tmp_path / "bench.json"
    code = cli.main(
        ["bench", "--size", "tiny", "--samplers", "sghmc", "--json", str(path), "--no-cache"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "DLN suite" in out and "Sampler comparison" in out and "median |relative error|" in out
    saved = json.loads(path.read_text())
    rows = saved["results"]["sghmc"]
    assert len(rows) == 2 and saved["size"] == "tiny"
    for row in rows:
        assert row["widths"] == [5, 4, 6]
        assert row["relative_error"] == pytest.approx(row["estimate"] / row["true_lambda"] - 1)
        assert f"{100 * row['relative_error']:+.1f}%" in out  # printed per instance
        assert abs(row["relative_error"]) < 0.3  # a short run: loose, but catches a broken bench
    median = 100 * saved["summary"]["sghmc"]["median_abs_relative_error"]
    assert f"median |relative error| {median:.1f}%" in out


def test_bench_report_lists_every_sampler():
    row = dict(widths=[3, 2, 3], parameters=12, rank=1, true_lambda=4.0, estimate=4.2, mcse=0.1,
               rhat=1.01, relative_error=0.05, wall_time_seconds=1.0)
    results = {name: [row, dict(row, relative_error=-0.1, wall_time_seconds=3.0)]
               for name in benchmark.ALL_SAMPLERS}
    report = benchmark.format_report(dict(
        size="tiny", description="test", results=results,
        summary={name: benchmark.summarize(rows) for name, rows in results.items()},
    ))
    assert "median |relative error| 7.5%, max 10.0% over 2 instances" in report
    for name in benchmark.ALL_SAMPLERS:
        line = next(line for line in report.splitlines() if line.startswith(name))
        assert line.split()[-4:] == ["7.5%", "10.0%", "3.0s", "4.0s"]


@pytest.mark.filterwarnings("ignore:split R-hat")  # a short run; the bars are the point here
@pytest.mark.filterwarnings("ignore:the LLC draws are still drifting")  # 300 draws: plumbing only
def test_demo_progress_covers_calibration_and_sampling():
    # what `slt-jax demo` shows: a bar per calibration step, then the run; each sample() bar
    # starts in a "compiling" phase (the demo test above compiled these programs already)
    import jax

    import slt_jax as slt
    from slt_jax.data import make_dln_data, make_dln_teacher
    from slt_jax.models import dln_loss

    class Recorder:
        def __init__(self):
            self.events = []

        def start(self, total_steps, description):
            self.events.append(("start", description, total_steps))

        def update(self, steps, phase):
            self.events.append(("update", phase, steps))

        def close(self):
            self.events.append(("close",))

    teacher = make_dln_teacher(jax.random.key(0), [5, 4, 6], minimal_rank=True)
    data = make_dln_data(jax.random.key(1), teacher.params, 2000)
    recorder = Recorder()
    result = slt.estimate_llc(dln_loss, teacher.params, data, key=jax.random.key(2),
                              num_draws=300, progress=recorder)
    extensions = result.hyperparameters["extensions"]  # a drifting run is continued
    starts = [event[1] for event in recorder.events if event[0] == "start"]
    assert starts[0] == "calibrating: top Hessian eigenvalue"
    assert "calibrating (pilot 1)" in starts and "calibrating: gradient noise" in starts
    assert starts[-1].startswith("sampling 4 chains")
    assert recorder.events.count(("close",)) == len(starts)
    # the main run is two sample() bars (issue 20): the burn-in, then the draws continued at the
    # batch chosen after it (with 150 // 4 steps to re-equilibrate where the batch was raised)
    assert starts[-2 - extensions].startswith("sampling 4 chains")
    main = [e[:2] for e in recorder.events].index(("start", starts[-2 - extensions]))
    final = recorder.events[main:]
    assert final[1] == ("update", "compiling", 0)
    from slt_jax.estimators import estimate

    settle = 150 // 4 if (estimate.NOISE_GROWTH * result.hyperparameters[
        "gradient_noise_bias_after_burnin"] > estimate.NOISE_RERUN) else 0
    # draws + burn-in, and num_draws more per extension
    assert sum(e[2] for e in final if e[0] == "update") == 300 + 150 + settle + 300 * extensions
