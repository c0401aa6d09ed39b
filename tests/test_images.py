"""Image and file I/O: clear errors for bad images, atomic writes with ordinary file modes."""

import os
import stat

import numpy as np
import pytest

from shared.errors import DatasetError
from shared.images import atomic_write_bytes, load_grayscale, save_png


def test_atomic_write_leaves_only_the_complete_file_with_umask_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "out/file.bin", b"data")
    finally:
        os.umask(old_umask)
    path = tmp_path / "out/file.bin"
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by others, like any file the umask allows
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]  # no temporary file left behind


def test_truncated_and_non_image_files_fail_naming_the_file(tmp_path):
    save_png(np.full((32, 32), 128, dtype=np.uint8), tmp_path / "good.png")
    assert load_grayscale(tmp_path / "good.png").size == (32, 32)
    (tmp_path / "truncated.png").write_bytes((tmp_path / "good.png").read_bytes()[:40])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("truncated.png", "text.png", "missing.png"):
        with pytest.raises(DatasetError, match=name):
            load_grayscale(tmp_path / name)
