import os
import stat

import pytest

from zerop_deploy.errors import InputError
from zerop_deploy.fileio import atomic_write_bytes, check_output_path


def test_atomic_write_leaves_no_temp_file_and_uses_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_bytes(tmp_path / "out.bin", b"abc")
    finally:
        os.umask(old)
    assert p.read_bytes() == b"abc" and [f.name for f in tmp_path.iterdir()] == ["out.bin"]
    assert stat.S_IMODE(p.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_output_over_the_input_or_in_a_missing_folder_is_refused(tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(b"x")
    with pytest.raises(InputError, match="input model"):
        check_output_path(src, [src])
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "o.onnx")
