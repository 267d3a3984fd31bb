"""The attention-only transformer's per-head refined LLC: wall time of one ``estimate_llc`` call.

Issue 20's goal is the refined-LLC notebook's setting (``AttentionOnlyTransformer`` vocabulary 16,
length 16, d_model 32, 4 heads of width 8, trained 2000 steps on ``make_induction_data``;
``estimate_llc(mask=masks.head(params, "blocks/0/attn/*", head=0, axis=0), num_draws=1000)``)
in at most 30 s per head on the 2-core CPU. This runs ``estimate_llc_time.py``'s transformer
child (a fresh process: a cold call, then a warm call with another key) for this checkout and,
with ``--before DIR``, for another checkout (e.g. ``git archive HEAD | tar -x -C /tmp/before``)
back to back, and prints the phase table (calibration / burn-in / draws / checks / reruns /
compile), the LLC ± MCSE, the batch size and the ratio of the whole call to its main run
(burn-in + draws: the sampling steps, the floor at the chosen batch).

    python benchmarks/transformer_head_time.py [--label after] [--before /tmp/before]
        [--repeats 1]

Writes ``benchmarks/results/transformer_head_time_<label>.json``. The machine is shared: the
load average is recorded with every call, and CPU seconds next to wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from estimate_llc_time import CHILD, RESULTS, _child, _table  # noqa: E402


def _ratios(rows: list) -> list:
    """Per call: the whole call over its main run (burn-in + draws)."""
    out = []
    for row in rows:
        main = row["phases"].get("burn_in", 0.0) + row["phases"].get("draws", 0.0)
        out.append(dict(call=row["call"], main_run_seconds=main,
                        call_over_main_run=row["wall_seconds"] / main if main else None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after")
    parser.add_argument("--before", default=None,
                        help="a checkout of the code before the change, run side by side")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate before/after this many times (the load moves)")
    args = parser.parse_args()
    trees = {"after": None, **({"before": args.before} if args.before else {})}
    results = {"label": args.label, "time": time.ctime(), "load_average_at_start": os.getloadavg(),
               "runs": {name: [] for name in trees}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"transformer_head_time_{args.label}.json"
    for _ in range(args.repeats):
        for tree_name, tree in trees.items():
            rows = _child(CHILD, "transformer", tree)
            for row, ratio in zip(rows, _ratios(rows)):
                row.update(ratio)
            results["runs"][tree_name].append(rows)
            _table("transformer", tree_name, rows)
            print("  call / main run: " + ", ".join(
                f"{r['call']} {r['call_over_main_run']:.2f}x" for r in rows
                if r["call_over_main_run"]))
            path.write_text(json.dumps(results, indent=2))  # so far
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
