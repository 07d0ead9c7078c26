"""evaluate_completion refuses a held-out set it cannot fill instead of reporting NaN."""

from __future__ import annotations

import pytest

from training.data.generator_data import FaceDataError


class _NoFace:
    def detect(self, image):
        return []


def test_a_set_with_no_usable_face_is_an_error(shared_data):
    from training.evaluation.evaluate_completion import lfw_cases, web_cases

    with pytest.raises(FaceDataError, match="no held-out LFW people from 0 on"):
        lfw_cases(shared_data, synth=None, detector=_NoFace(), n=5, seed=0, offset=0)
    with pytest.raises(FaceDataError, match="no unmasked web photo with a face"):
        web_cases(shared_data, synth=None, detector=_NoFace(), n=5, seed=0, offset=0)
