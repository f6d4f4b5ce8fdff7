"""Issue 6's chaos suite: seeded random SIGKILL/SIGSTOP/SIGCONT schedules against coordinators, servers and
clients during concurrent real-time plays, real processes on 127.0.0.1 (see chaos_run.py for what each run
checks and chaos_schedule.py for what a schedule may do).

Seeds: $VOD_CHAOS_SEEDS ("0-19", "3,7,11"), by default 0-19, a CI-sized run (three servers, three clients,
a five-second movie). Each seed is its own test, named by its seed; the session's summary lists the seeds run
and how each ended, and a failure prints the schedule as fired and the line that replays it. Longer runs:
bench/chaos.py.
"""

from __future__ import annotations

import os

import pytest

from chaos_run import run_chaos
from chaos_schedule import Shape, chaos_seeds


@pytest.mark.parametrize("seed", chaos_seeds(os.environ.get("VOD_CHAOS_SEEDS")), ids=lambda s: f"seed={s}")
def test_chaos_run(seed, tmp_path):
    report = run_chaos(seed, tmp_path, Shape())
    print(report.text())
    assert report.passed, report.text()


def test_seed_lists_parse():
    assert chaos_seeds(None) == list(range(20))
    assert chaos_seeds("3,7, 9-11") == [3, 7, 9, 10, 11]
