"""pytest plugin for ``benchmarks/mutate.py``: each test's duration (setup + call + teardown)
written as JSON to the file named by ``PPL_VI_DURATIONS`` when the session ends (with xdist,
the controller sees every worker's reports)."""

import json
import os

_DURATIONS: dict = {}


def pytest_runtest_logreport(report):
    _DURATIONS[report.nodeid] = _DURATIONS.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    path = os.environ.get("PPL_VI_DURATIONS")
    if path and not hasattr(session.config, "workerinput"):  # the controller only
        with open(path, "w") as f:
            json.dump(_DURATIONS, f)
