"""Face cues: a verifier that sees only the rows above the mask, and its training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.models.verifier import VerifierConfig, build_verifier
from training.data.generator_data import FaceRecord
from training.train.train_face_cue import QUESTIONS, grey_lower, labels_of


def test_rows_below_visible_rows_do_not_change_the_answer():
    torch.manual_seed(0)
    # Batch statistics: an untrained net's output in eval mode hardly depends on its input.
    model = build_verifier(config=VerifierConfig(size=32, width=8, visible_rows=0.5)).train()
    image = torch.rand(4, 3, 32, 32)
    other_mask = image.clone()
    other_mask[:, :, 16:] = torch.rand(4, 3, 16, 32)
    other_eyes = image.clone()
    other_eyes[:, :, :16] = 1.0 - other_eyes[:, :, :16]
    with torch.no_grad():
        base, masked, eyes = model(image), model(other_mask), model(other_eyes)
    torch.testing.assert_close(masked, base)
    assert (eyes - base).abs().min() > 1e-3
    with pytest.raises(ValueError, match="visible_rows"):
        VerifierConfig(visible_rows=0.0)


def test_grey_lower_greys_from_a_row_at_or_above_the_visible_share():
    batch = torch.rand(64, 3, 50, 50)
    out = grey_lower(batch, torch.Generator().manual_seed(0), rows=0.5, lift=0.1)
    assert torch.equal(out[:, :, :20], batch[:, :, :20])  # above 0.5 - 0.1 of the side: untouched
    assert (out[:, :, 25:] == 0.5).all()
    starts = [(img[0, :, 0] == 0.5).nonzero()[0, 0].item() for img in out]
    assert min(starts) >= 20 and max(starts) <= 25 and len(set(starts)) > 1


def test_the_questions_read_utkfaces_labels():
    landmarks = np.zeros((68, 2), np.float32)
    faces = [FaceRecord(Path(f"faces/{name}"), landmarks)
             for name in ("7_1_0_20170109.jpg", "45_0_3_20170117.jpg", "12_0_1_20170101.jpg", "30_1_2_20170101.jpg")]
    assert [labels_of(f) for f in faces] == [(7, 1), (45, 0), (12, 0), (30, 1)]
    assert [QUESTIONS["man"](*labels_of(f)) for f in faces] == [False, True, False, False]
    assert [QUESTIONS["child"](*labels_of(f)) for f in faces] == [True, False, True, False]
