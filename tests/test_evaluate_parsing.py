"""evaluate_parsing: bad weights are a one-line error before any data is read."""

from __future__ import annotations

from training.evaluation import evaluate_parsing


def test_missing_weights_exit_2(tmp_path, caplog):
    assert evaluate_parsing.main(["--weights", str(tmp_path / "none.pt"), "--data", str(tmp_path / "no-data")]) == 2
    assert "none.pt" in caplog.text
