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


def _face_with_lower(value: float, *, rough: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A 100 px grey face whose chin and upper lip (dlib points 31-57 and the jaw below) are ``value``,
    with noise of ``rough`` grey levels there, and 200 elsewhere; its landmarks."""
    lm = np.zeros((68, 2), np.float32)
    jaw = np.linspace(np.pi, 0.0, 17)
    lm[:17] = np.stack([50 + 40 * np.cos(jaw), 50 + 45 * np.sin(jaw)], 1)
    lm[27:31] = [[50, 35], [50, 42], [50, 48], [50, 55]]
    lm[31:36] = [[42, 60], [46, 61], [50, 62], [54, 61], [58, 60]]
    lm[36:48] = [[30 + i, 38] for i in range(6)] + [[60 + i, 38] for i in range(6)]
    lm[48:60] = [[38, 72], [42, 70], [46, 69], [50, 69], [54, 69], [58, 70], [62, 72],
                 [58, 76], [54, 78], [50, 78], [46, 78], [42, 76]]
    image = np.full((100, 100), 200.0, np.float32)
    lower = build_exemplars._region(image.shape, lm, (5, 6, 7, 8, 9, 10, 11, 57),
                                    (48, 31, 32, 33, 34, 35, 54, 52, 51, 50))
    noise = np.random.default_rng(0).normal(0.0, rough, image.shape) if rough else 0.0
    image = np.where(lower, value + noise, image)
    return np.repeat(image.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2), lm


def test_shaven_refuses_a_darker_or_rougher_chin_and_lip():
    assert build_exemplars.shaven(*_face_with_lower(200.0))
    assert not build_exemplars.shaven(*_face_with_lower(150.0))  # a beard's shadow
    assert not build_exemplars.shaven(*_face_with_lower(200.0, rough=12.0))  # stubble
