"""Progress output: plain periodic lines off a terminal, Lightning's lines once and without tips, and the
hyperparameter listing of `bctbench methods --params`."""

from __future__ import annotations

import logging

import pytest

from bctbench import progress
from bctbench.cli import main


@pytest.fixture
def plain(monkeypatch):
    monkeypatch.setattr(progress, "_state", dict(progress._state))
    progress.configure(True, interval_s=0.0, tty=False)
    yield
    progress.configure(False)


def test_plain_lines_count_and_finish(plain, caplog):
    caplog.set_level(logging.INFO, logger="bctbench")
    assert list(progress.track(range(3), "features x", unit="batches")) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == [
        f"features x: {i}/3 batches ({round(100 * i / 3)} %), 0 s, about 0 s left" for i in (1, 2, 3)
    ]
    assert lines[-1] == "features x: done, 3 batches in 0 s"


def test_off_means_silent(caplog, monkeypatch):
    monkeypatch.setattr(progress, "_state", dict(progress._state))
    progress.configure(False)
    caplog.set_level(logging.INFO, logger="bctbench")
    assert list(progress.track([1, 2], "x")) == [1, 2]
    with progress.stage("y"):
        pass
    assert caplog.records == []


def test_lightning_lines_once_and_without_tips(capsys):
    import lightning.pytorch  # noqa: F401 - installs Lightning's own handler

    root = logging.getLogger()
    handler = logging.StreamHandler()  # stands for the CLI's basicConfig handler
    root.addHandler(handler)
    try:
        progress.quiet_lightning_logs()
        lg = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        lg.warning("GPU available: False, used: False")
        lg.warning("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("GPU available") == 1 and "Tip" not in err


def test_methods_params_lists_types_defaults_and_docs(capsys):
    assert main(["methods", "--params", "bct"]) == 0
    out = capsys.readouterr().out
    assert "weight : float = 1.0" in out and "search: [" in out
    assert "new_class_rows : str = 'synthesized'" in out and "influence loss only on samples" in out
    assert main(["methods", "--params", "nosuch"]) == 2
    assert "unknown method" in capsys.readouterr().err.lower()
