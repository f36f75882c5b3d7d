"""qsep_core.atomic: a destination is replaced whole or not at all; temporaries never stay behind."""
from __future__ import annotations

import pytest

from qsep_core.atomic import PART_SUFFIX, AtomicPath, atomic_write_text


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(PART_SUFFIX) or p.name.endswith(".old"))


def test_file_is_replaced_on_success_and_kept_on_error(tmp_path):
    dest = tmp_path / "a.txt"
    atomic_write_text(dest, "one")
    with pytest.raises(RuntimeError):
        with AtomicPath(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert dest.read_text() == "one" and _leftovers(tmp_path) == []
    atomic_write_text(dest, "two")
    assert dest.read_text() == "two"


def test_overwrite_false_refuses_before_and_at_commit(tmp_path):
    dest = tmp_path / "a.txt"
    atomic_write_text(dest, "one")
    with pytest.raises(FileExistsError):
        AtomicPath(dest, overwrite=False)
    late = tmp_path / "late.txt"
    w = AtomicPath(late, overwrite=False)
    w.tmp.write_text("mine")
    late.write_text("someone else's")  # appears while writing
    with pytest.raises(FileExistsError):
        w.commit()
    assert late.read_text() == "someone else's" and _leftovers(tmp_path) == []


def test_two_writers_get_their_own_temporaries(tmp_path):
    a, b = AtomicPath(tmp_path / "x"), AtomicPath(tmp_path / "x")
    assert a.tmp != b.tmp
    a.abort()
    b.abort()
    b.abort()  # twice is fine
    assert _leftovers(tmp_path) == []


def test_folder_replaced_whole(tmp_path):
    dest = tmp_path / "model"
    with AtomicPath(dest, directory=True) as tmp:
        (tmp / "old.json").write_text("{}")
    with AtomicPath(dest, directory=True) as tmp:
        (tmp / "new.json").write_text("{}")
    assert [p.name for p in dest.iterdir()] == ["new.json"] and _leftovers(tmp_path) == []


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "nope" / "a.txt", "x")


def test_results_get_the_permissions_of_a_plain_write(tmp_path):
    """tempfile makes 0600 files and 0700 folders; a committed result must be readable like any new file."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        with AtomicPath(tmp_path / "out.wav") as tmp:
            tmp.write_bytes(b"x")
        with AtomicPath(tmp_path / "model", directory=True) as tmp:
            (tmp / "a").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.wav").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


def test_files_written_by_safetensors_get_the_umask_mode(tmp_path):
    """safetensors' save_file creates 0600 files; a model folder or tensor file made through qsep follows the
    umask like any other output (a model exported on a shared machine is readable by the others)."""
    import os
    import stat

    import torch

    from safetensors.torch import save_file

    from qsep_core.atomic import AtomicPath
    from qsep_core.checkpoint import Component, save_model

    old = os.umask(0o022)
    try:
        folder = save_model(tmp_path / "m", {"x": Component("anything", {}, {"w": torch.zeros(2)})})
        with AtomicPath(tmp_path / "t.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    for p in (folder / "model.safetensors", folder / "config.json", tmp_path / "t.safetensors"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
