"""What a user sees off a terminal (a log file, CI): progress lines for every long step, Lightning's lines once
and without its tips, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_run_reports_its_steps_in_plain_lines(world):
    env = dict(os.environ, WANDB_MODE="disabled", BCTBENCH_PROGRESS_S="0", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "bctbench.cli", "run", "-b", "smoke", "-m", "lce", "--seed", "0", "--no-wandb"]
        + [
            "--data-root",
            str(world.data),
            "--cache-root",
            str(world.cache),
            "--results-root",
            str(world.results),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    for needle in (
        "features old features: done",  # the artefact pass over the training set
        "train lce: epoch 1/1 done in",
        "features rsynth/query/",
        "search and score rsynth: done",
        "backfilling curves rsynth: done",
        "search and score gldv2synth: done",
    ):
        assert needle in err, (needle, err[-3000:])
    assert err.count("GPU available") == 1 and "Tip" not in err and "Traceback" not in err
