"""Run plain Pyro on every corpus case and compare with the registry.

For each case: ``SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())``
for 300 steps on the torch-converted data (see ``corpus.to_torch``), and, where the case has a
``pyro_recipe``, the same loop with the guide and ELBO its Pyro original uses. Prints ok/FAIL,
the mean loss of the last 50 steps and milliseconds per step, and flags any case whose
``autonormal_fits`` (or ``slow``) disagrees with what it measured. Not a test; run it with

    python tests/corpus/check_pyro.py [case names...]

from the repository root (or ``python -m tests.corpus.check_pyro``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from corpus import CASES
else:
    from . import CASES

NUM_STEPS = 300
SLOW_MS = 20.0  # a case is slow when one step takes more than this ...
SLOW_MARGIN = 1.5  # ... and timings within this factor of it are not reported as mismatches


def run_svi(model, make_guide, make_elbo, args, kwargs, num_steps=NUM_STEPS):
    """Returns (ok, mean loss of the last 50 steps, ms per step, error message)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    losses = []
    try:
        guide = make_guide()
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), make_elbo())
        start = time.perf_counter()
        for _ in range(num_steps):
            losses.append(svi.step(*args, **kwargs))
        ms = 1000 * (time.perf_counter() - start) / num_steps
    except Exception as error:  # noqa: BLE001 - report any failure
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
        return False, math.nan, math.nan, message[:160]
    ok = all(math.isfinite(loss) for loss in losses)
    return ok, float(np.mean(losses[-50:])), ms, "" if ok else "non-finite loss"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="cases to run (default: all)")
    options = parser.parse_args(argv)

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    cases = [case for case in CASES if not options.names or case.name in options.names]
    mismatches = []
    header = f"{'case':38s} {'guide':10s} {'result':6s} {'loss(last50)':>14s} {'ms/step':>8s}"
    print(header)
    print("-" * len(header))
    for case in cases:
        args, kwargs = case.torch_data()
        runs = [("autonormal", lambda case=case: AutoNormal(case.model), Trace_ELBO)]
        if case.pyro_recipe is not None:
            runs.append(("recipe", case.pyro_guide, case.pyro_elbo))
        timings = {}
        for label, make_guide, make_elbo in runs:
            ok, loss, ms, message = run_svi(case.model, make_guide, make_elbo, args, kwargs)
            timings[label] = ms if ok else math.nan
            result = "ok" if ok else "FAIL"
            line = f"{case.name:38s} {label:10s} {result:6s} {loss:14.3f} {ms:8.1f}"
            print(line + (f"  {message}" if message else ""), flush=True)
            if label == "autonormal" and ok != case.autonormal_fits:
                mismatches.append(f"{case.name}: autonormal_fits={case.autonormal_fits}, ran {ok}")
            if label == "recipe" and not ok:
                mismatches.append(f"{case.name}: pyro_recipe failed")
        ms = timings["autonormal"] if case.autonormal_fits else timings.get("recipe", math.nan)
        too_slow = ms > SLOW_MS * SLOW_MARGIN and not case.slow
        too_fast = ms < SLOW_MS / SLOW_MARGIN and case.slow
        if math.isfinite(ms) and (too_slow or too_fast):
            mismatches.append(f"{case.name}: slow={case.slow}, measured {ms:.1f} ms/step")
    print()
    if mismatches:
        print("registry mismatches:")
        for mismatch in mismatches:
            print("  " + mismatch)
        return 1
    print(f"registry agrees with plain Pyro on all {len(cases)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
