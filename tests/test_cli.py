"""``slt-jax demo``: the README's first command prints an estimate next to its truth."""

import re

from slt_jax import cli


def test_demo_prints_estimate_and_truth(capsys):
    code = cli.main(
        ["demo", "--widths", "5", "4", "6", "--num-samples", "2000", "--num-draws", "1000",
         "--quiet", "--no-cache"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "sampler         : sghmc" in out
    estimate = float(re.search(r"estimated LLC\s*:\s*([-\d.]+)", out).group(1))
    truth = float(re.search(r"true λ \(Aoyagi\)\s*:\s*([-\d.]+)", out).group(1))
    error = float(re.search(r"relative error\s*:\s*([-+\d.]+)%", out).group(1))
    assert abs(100 * (estimate / truth - 1) - error) < 0.1  # the printed error is the ratio's
    assert abs(error) < 25  # a short run of a small network: loose, but catches a broken demo
