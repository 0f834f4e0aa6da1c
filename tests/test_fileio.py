import errno
import os
import stat

import pytest

from zerop_deploy.errors import InputError
from zerop_deploy.io import atomic_write_bytes, check_output_path


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
    with pytest.raises(InputError, match="is the input"):
        check_output_path(src, [src])
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "o.onnx")


def test_disk_full_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InputError, match="No space left on device"):
        atomic_write_bytes(tmp_path / "out.onnx", b"x" * 1000)
    assert list(tmp_path.iterdir()) == []  # no partial output, no temp file


def test_several_outputs_are_written_all_or_nothing(tmp_path, monkeypatch):
    from zerop_deploy.io import atomic_write_all

    old = tmp_path / "a.onnx"
    old.write_bytes(b"previous run")
    real_fsync, calls = os.fsync, []

    def fail_second(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr("zerop_deploy.io.os.fsync", fail_second)
    with pytest.raises(InputError, match="b.json: cannot be written"):
        atomic_write_all([(old, b"new model"), (tmp_path / "b.json", b"{}")])
    assert old.read_bytes() == b"previous run"  # the first file was not renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]


def test_output_lock_is_held_for_the_block_and_removed_after(tmp_path):
    from zerop_deploy.io import output_lock

    out = tmp_path / "m.int4.onnx"
    with output_lock(out) as lock:
        assert lock == tmp_path / "m.int4.onnx.lock"
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(InputError) as err, output_lock(out):
            pass
        assert str(err.value) == (
            f"{out}: another zerop-deploy run is writing this output (pid {os.getpid()}); wait "
            "for it to finish or choose another -o"
        )
        with output_lock(tmp_path / "other.onnx"):  # another output is another lock
            pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), output_lock(out):  # released when the run fails too
        raise RuntimeError("the run failed")
    with output_lock(out):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_left_by_a_killed_run_does_not_block(tmp_path):
    from zerop_deploy.io import output_lock

    (tmp_path / "m.onnx.lock").write_text("999999\n")  # kill -9: the file stays, the flock not
    with output_lock(tmp_path / "m.onnx") as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
    assert list(tmp_path.iterdir()) == []


def test_only_rank_0_of_a_torchrun_locks(tmp_path, monkeypatch):
    from zerop_deploy.io import output_lock

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with output_lock(tmp_path / "m.onnx") as lock:
        monkeypatch.setenv("RANK", "1")
        with output_lock(tmp_path / "m.onnx") as other:  # the same run's other rank
            assert lock is not None and other is None
