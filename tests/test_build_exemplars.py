"""The exemplar bank's draw: which training faces it takes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from training.data import build_exemplars


def _records(names: list[str]) -> list:
    return [SimpleNamespace(path=Path(n), landmarks=np.zeros((68, 2), np.float32)) for n in names]


def test_an_excluded_face_gives_its_place_to_the_next_of_its_group(monkeypatch):
    monkeypatch.setattr(build_exemplars, "face_turn", lambda lm: 0.5)
    monkeypatch.setattr(build_exemplars, "_mouth_open", lambda lm: 0.0)
    women = [f"{20 + i}_1_0_2017010{i}.jpg" for i in range(6)]
    others = [f"{30 + i}_1_1_2017010{i}.jpg" for i in range(4)]
    records = _records(women + others)
    drawn = [r.path.name for r in build_exemplars.choose(records, per_group=2, seed=0)]
    assert len(drawn) == 4
    left_out = drawn[0]
    again = [r.path.name for r in build_exemplars.choose(records, per_group=2, seed=0, exclude=frozenset({left_out}))]
    assert left_out not in again and len(again) == 4
    # Only the excluded face changed: the rest of the bank is drawn as before.
    assert set(drawn) - set(again) == {left_out} and len(set(again) - set(drawn)) == 1
