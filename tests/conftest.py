import sys
from pathlib import Path

# Tests import the top-level packages (stream, engines, training) from a plain checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Path:
    """Exports made on first use (run_stream's default) go to a folder of this test session,
    never to the user's cache."""
    import os

    folder = tmp_path_factory.mktemp("export_cache")
    os.environ["UNMASK_STREAM_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> tuple[Path, Path]:
    """Small untrained networks of the shipped architectures, for plumbing tests."""
    from engines.models.detector import DetectorConfig, build_detector, save_detector
    from engines.models.generator import GeneratorConfig, build_generator, save_generator

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    det_cfg = DetectorConfig(input_size=(128, 128))
    save_detector(build_detector(det_cfg), det_cfg, root / "detector.pt", meta={"untrained": True})
    gen_cfg = GeneratorConfig(size=64, width=8, output_blur=1.0)
    save_generator(build_generator(config=gen_cfg), gen_cfg, root / "generator.pt", meta={"untrained": True})
    return root / "detector.pt", root / "generator.pt"
