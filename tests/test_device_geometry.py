"""Cut and paste on tensors (the GPU path) against the OpenCV path they replace, on the CPU with
the same torch code; on a CUDA machine (scripts/gpu_check.sh) also on the GPU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engines.models.generator import GeneratorConfig
from engines.runtime import Engine, TensorSpec
from stream.geometry import CropWindow
from stream.inpaint import FaceInpainter
from stream.records import Track
from stream.reference import REFERENCE_SIDE, ReferenceFace, References
from stream.smoothing import TemporalConfig

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _smooth(shape, seed, sigma=2.0):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, shape, dtype=np.uint8), (0, 0), sigma)


def _tensor(image, device):
    return torch.from_numpy(image).permute(2, 0, 1).float().to(device)


# A window inside the frame, one leaving it at the left, and a large face that is pre-blurred.
WINDOWS = [(CropWindow(50.3, 40.7, 100.2), 64), (CropWindow(-20.5, 100.2, 130.0), 64), (CropWindow(10.0, 5.0, 220.0), 64)]


@pytest.mark.parametrize("window", [CropWindow(60.0, 20.0, 150.0), CropWindow(-40.5, 130.2, 160.0),
                                    CropWindow(250.0, -30.0, 150.0), CropWindow(400.0, 300.0, 150.0)])
def test_a_large_face_is_pre_blurred_where_the_window_reaches_as_over_the_whole_frame(window):
    image = _smooth((240, 320, 3), 5, sigma=1.0)
    whole = cv2.GaussianBlur(image, (0, 0), 0.5 * window.side / 32)
    expected = cv2.warpAffine(whole, window._crop_to_frame(32), (32, 32),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    assert np.array_equal(window.cut(image, 32), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window,size", WINDOWS)
def test_tensor_cut_matches_opencv(device, window, size):
    image = _smooth((240, 320, 3), 0)
    expected = window.cut(image, size).astype(np.float32)
    got = window.cut_tensor(_tensor(image, device), size).permute(1, 2, 0).cpu().numpy()
    assert np.abs(got - expected).max() <= 1.5 and np.abs(got - expected).mean() < 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window,size", WINDOWS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("detail_map", [None, "none", np.array([[1.1, 0.05, 3.0], [-0.05, 1.05, 5.0]], np.float32)])
def test_tensor_paste_matches_opencv(device, window, size, detail_map, weighted):
    image = _smooth((240, 320, 3), 1)
    patch = _smooth((size, size, 3), 2, sigma=1.0).astype(np.float32)
    alpha = np.clip(_smooth((size, size), 3, sigma=3.0).astype(np.float32) / 128.0 - 0.5, 0, 1)
    detail = _smooth((REFERENCE_SIDE, REFERENCE_SIDE, 3), 4, sigma=1.0)
    weight = np.clip(_smooth((REFERENCE_SIDE, REFERENCE_SIDE), 5, sigma=6.0).astype(np.float32) / 64.0 - 1.5, 0, 1)
    kwargs = {} if isinstance(detail_map, str) else {"detail_sigma": 2.0, "detail_map": detail_map}
    expected = image.copy()
    window.paste(expected, patch, alpha, detail=detail if kwargs else None,
                 detail_weight=weight if weighted and kwargs else None, **kwargs)
    frame = _tensor(image, device)
    window.paste_tensor(frame, torch.from_numpy(patch).permute(2, 0, 1).to(device), torch.from_numpy(alpha).to(device),
                        detail=_tensor(detail, device) if kwargs else None,
                        detail_weight=torch.from_numpy(weight).to(device) if weighted and kwargs else None, **kwargs)
    got = (frame + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.2
    assert np.abs(expected.astype(int) - image).max() > 20  # the paste did change the frame


@pytest.mark.parametrize("with_detail", [False, True])
def test_paste_works_over_the_alphas_extent_with_the_whole_windows_result(with_detail):
    window, size = CropWindow(40.0, 20.0, 180.0), 64
    image = _smooth((240, 320, 3), 5)
    patch = _smooth((size, size, 3), 6, sigma=1.0).astype(np.float32)
    alpha = np.zeros((size, size), np.float32)
    alpha[36:58, 14:50] = 1.0
    alpha = cv2.GaussianBlur(alpha, (0, 0), 1.5)
    alpha[alpha < 1e-3] = 0.0  # the lower face only, as the seam of a hole
    kwargs = {"detail": _smooth((REFERENCE_SIDE, REFERENCE_SIDE, 3), 7, sigma=1.0), "detail_sigma": 2.0} if with_detail else {}
    shrunk, whole = image.copy(), image.copy()
    window.paste(shrunk, patch, alpha, **kwargs)
    # A vanishing alpha everywhere extends the paste over the whole window and changes no pixel by itself.
    window.paste(whole, patch, alpha + 1e-12, **kwargs)
    diff = np.abs(shrunk.astype(int) - whole.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.02
    assert np.abs(shrunk.astype(int) - image).max() > 20
    assert (shrunk[:80] == image[:80]).all()  # above the hole's rows nothing is touched


class _ReferenceEngine(Engine):
    """A reference-conditioned generator stand-in: the reference where one is valid, else the
    crop's negative (so the paste is seen on every face)."""

    backend = "test"

    def __init__(self, size: int, device: str) -> None:
        self.device = torch.device(device)
        self.inputs = tuple(TensorSpec(n, ("N", c, size, size), "float32")
                            for n, c in (("image", 3), ("mask", 1), ("reference", 3), ("reference_mask", 1)))
        self.outputs = (TensorSpec("output", ("N", 3, size, size), "float32"),)

    def _run(self, feeds, stream):
        valid = feeds["reference_mask"]
        return {"output": feeds["reference"] * valid + (1 - feeds["image"]) * (1 - valid)}


@pytest.mark.parametrize("device", DEVICES)
def test_inpainter_on_device_matches_the_host_path(device):
    config = GeneratorConfig(size=32, width=4, mask_dilation=1, reference=True)
    h, w = 160, 240
    tracks = []
    for track_id, (x1, y1) in enumerate([(20, 20), (130, 30)], start=1):
        box = np.array([x1, y1, x1 + 80, y1 + 96], np.float32)
        mask = np.zeros((h, w), bool)
        mask[y1 + 50:y1 + 90, x1 + 10:x1 + 70] = True
        tracks.append(Track(track_id, box, 0.9, mask))
    outputs = {}
    for on_device in (False, True):
        given = [ReferenceFace(_smooth((REFERENCE_SIDE, REFERENCE_SIDE, 3), 7), "me.png")]
        inpainter = FaceInpainter(_ReferenceEngine(config.size, device), config, temporal=TemporalConfig(),
                                  references=References(given=given, exemplars=[], memory=None),
                                  frames_on_device=on_device)
        outputs[on_device] = [inpainter(_smooth((h, w, 3), 10 + t), tracks) for t in range(3)]
    for host, dev in zip(outputs[False], outputs[True]):
        diff = np.abs(host.astype(int) - dev.astype(int))
        assert dev.dtype == np.uint8 and dev.shape == (h, w, 3) and dev.flags.c_contiguous
        assert diff.max() <= 4 and diff.mean() < 0.3
    assert np.abs(outputs[True][0].astype(int) - _smooth((h, w, 3), 10)).max() > 20  # faces were filled
