from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data.detector_data import DetectorDataConfig, segmentation_files
from training.data.landmarks import LandmarkCache, load_landmark_cache, save_landmark_cache
from training.data.pack_data import PackError, main, pack


@pytest.fixture()
def data(tmp_path) -> tuple[Path, Path]:
    """A shared-data tree in miniature: 60 faces with a landmark cache, templates, textures, IWM/CWM."""
    root = tmp_path / "data"
    faces = root / "faces" / "utkface"
    faces.mkdir(parents=True)
    names = []
    for i in range(60):
        name = f"{i:03d}_face.jpg"
        cv2.imwrite(str(faces / name), np.full((200, 200, 3), i, np.uint8))
        names.append(name)
    marks = np.random.default_rng(0).uniform(0, 200, (60, 68, 2)).astype(np.float32)
    cache = tmp_path / "landmarks.npz"
    save_landmark_cache(LandmarkCache(files=tuple(names), landmarks=marks, detected=np.ones(60, bool)), cache)
    (root / "mask_templates" / "templates").mkdir(parents=True)
    (root / "mask_templates" / "masks.cfg").write_text("[cloth]\n")
    cv2.imwrite(str(root / "mask_templates" / "templates" / "cloth.png"), np.zeros((30, 50, 4), np.uint8))
    (root / "mask_templates" / "textures" / "check").mkdir(parents=True)
    cv2.imwrite(str(root / "mask_templates" / "textures" / "check" / "big.png"), np.zeros((1000, 800, 3), np.uint8))
    for name in ("IWM", "CWM"):
        (root / "segmentation" / "training" / name / "images").mkdir(parents=True)
        (root / "segmentation" / "training" / name / "masks").mkdir(parents=True)
        for k in range(10):
            cv2.imwrite(str(root / "segmentation" / "training" / name / "images" / f"{k:05d}.jpg"),
                        np.full((512, 512, 3), 128, np.uint8))
            gt = np.zeros((512, 512, 3), np.uint8)
            gt[100:300, 100:400] = (0, 255, 0)
            gt[301:400, 100:400] = (0, 0, 255)
            cv2.imwrite(str(root / "segmentation" / "training" / name / "masks" / f"{k:05d}_gt.png"), gt)
    return root, cache


def test_copy_holds_training_faces_only_and_what_training_reads(data, tmp_path):
    root, cache = data
    out = tmp_path / "packed"
    summary = pack(data=root, landmarks=cache, out=out, faces=20)
    packed = load_landmark_cache(out / "landmarks.npz")
    assert summary.faces == 20 and len(packed.files) == 20 and len(set(packed.files)) == 20
    held_out = {f"{i:03d}_face.jpg" for i in range(0, 60, DetectorDataConfig().val_utk_every)}
    assert not held_out & set(packed.files)
    original = load_landmark_cache(cache)
    for name, marks in zip(packed.files, packed.landmarks):
        assert (out / "data" / "faces" / "utkface" / name).is_file()
        np.testing.assert_array_equal(marks, original.landmarks[original.files.index(name)])
    assert sorted(p.name for p in (out / "data" / "faces" / "utkface").iterdir()) == sorted(packed.files)

    assert (out / "data" / "mask_templates" / "masks.cfg").read_text() == "[cloth]\n"
    texture = cv2.imread(str(out / "data" / "mask_templates" / "textures" / "check" / "big.jpg"))
    assert texture.shape == (512, 410, 3) and summary.textures == 1

    assert summary.segmentation_images == 20
    for split in ("train", "val"):
        names = [(i.relative_to(out / "data"), g.relative_to(out / "data"))
                 for i, g in segmentation_files(out / "data" / "segmentation" / "training", split)]
        assert names == [(i.relative_to(root), g.relative_to(root))
                         for i, g in segmentation_files(root / "segmentation" / "training", split)]
    gt = cv2.imread(str(out / "data" / "segmentation" / "training" / "CWM" / "masks" / "00001_gt.png"))
    assert gt.shape == (384, 384, 3)
    assert set(map(tuple, gt.reshape(-1, 3))) == {(0, 0, 0), (0, 255, 0), (0, 0, 255)}
    assert summary.bytes == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def test_avoid_takes_other_faces_and_too_many_is_refused(data, tmp_path):
    root, cache = data
    first = tmp_path / "first"
    pack(data=root, landmarks=cache, out=first, faces=30)
    second = tmp_path / "second"
    pack(data=root, landmarks=cache, out=second, faces=27, avoid=load_landmark_cache(first / "landmarks.npz"))
    a = set(load_landmark_cache(first / "landmarks.npz").files)
    b = set(load_landmark_cache(second / "landmarks.npz").files)
    assert len(b) == 27 and not a & b  # 57 training faces in all: 30 + 27
    with pytest.raises(PackError, match="only 27"):
        pack(data=root, landmarks=cache, out=tmp_path / "third", faces=28, avoid=load_landmark_cache(first / "landmarks.npz"))


def test_cli_refuses_an_existing_folder(data, tmp_path, capsys):
    root, cache = data
    out = tmp_path / "exists"
    out.mkdir()
    assert main(["--data", str(root), "--landmarks", str(cache), "--out", str(out), "--faces", "5"]) == 1
    assert "exists" in capsys.readouterr().err


def test_generator_copy_leaves_the_generators_held_out_faces_behind(data, tmp_path):
    from training.data.generator_data import load_face_records, split_records

    root, cache = data
    out = tmp_path / "packed_generator"
    pack(data=root, landmarks=cache, out=out, faces=40, split_of="generator", generator_val_count=10)
    _, held_out = split_records(load_face_records(root / "faces" / "utkface", cache), val_count=10)
    packed = set(load_landmark_cache(out / "landmarks.npz").files)
    assert len(packed) == 40 and not packed & {r.path.name for r in held_out}
    with pytest.raises(PackError, match="split_of"):
        pack(data=root, landmarks=cache, out=tmp_path / "other", faces=5, split_of="parsing")
