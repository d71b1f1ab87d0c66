"""Host plan build time vs number of steps, for every registered solver's default configuration.

Multistep plans are built vectorised (numpy over all steps); singlestep methods write their steps one
by one.  Usage: ``python benchmarks/plan_build.py [--steps 1000 10000 100000] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

import scire_jax as sj
from scire_jax.core.solvers import registry


def measure(steps_list, repeats: int = 3):
    schedules = {"linear": sj.schedules.linear(), "discrete": sj.schedules.discrete(betas=np.linspace(1e-4, 0.02, 1000))}
    rows = []
    for name in registry.solver_names():
        for steps in steps_list:
            solver = registry.make_solver(name, steps)
            for schedule_name, schedule in schedules.items():
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    the_plan = solver.build_plan(schedule)  # uncached
                    times.append(time.perf_counter() - start)
                rows.append({"solver": name, "label": solver.label(), "method": solver.method, "steps": steps,
                             "schedule": schedule_name, "nfe": the_plan.nfe, "seconds": min(times)})
                print(f"{name:12s} {solver.method:17s} {schedule_name:9s} steps={steps:7d} {min(times):8.3f} s", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--out", default=".", help="output folder (default: the current directory)")
    args = parser.parse_args(argv)
    rows = measure(args.steps)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan_build.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# Host plan build time", "", f"Command: `python benchmarks/plan_build.py --steps "
             f"{' '.join(map(str, args.steps))}` (best of 3, uncached).", "",
             "| solver | method | schedule | steps | NFE | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['method']} | {r['schedule']} | {r['steps']} | {r['nfe']} | {r['seconds']:.3f} |"
              for r in rows]
    (out / "plan_build.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'plan_build.md'}")


if __name__ == "__main__":
    main()
