import os
import subprocess
import sys
import textwrap

import pytest

from model.store import VersionStore


def test_versions_are_numbered_and_pointer_moves(tmp_path):
    store = VersionStore(tmp_path)
    assert store.current(4) is None and store.versions(4) == []
    for _ in range(3):
        with store.new_version(4) as pending:
            (pending.path / "weights.bin").write_bytes(b"x")
        store.activate(4, pending.name)
    assert store.versions(4) == ["v1", "v2", "v3"] and store.current(4) == "v3"
    store.activate(4, "v1")  # rollback
    assert store.current(4) == "v1"
    assert store.prune(4, keep=1) == ["v2"]  # the current one survives whatever `keep` says
    assert store.versions(4) == ["v1", "v3"]


def test_a_failed_write_leaves_no_version(tmp_path):
    store = VersionStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.new_version(1) as pending:
            (pending.path / "half.bin").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert store.versions(1) == [] and store.current(1) is None
    assert not any(store.project_dir(1).iterdir())


def test_a_writer_killed_mid_save_leaves_no_visible_version(tmp_path):
    """SIGKILL leaves a hidden temp folder: not a version, not current, cleaned by prune once stale."""
    script = textwrap.dedent(f"""
        import os, signal
        from model.store import VersionStore
        store = VersionStore({str(tmp_path)!r})
        with store.new_version(7) as pending:
            (pending.path / "config.json").write_text("{{}}")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
    assert proc.returncode == -9
    store = VersionStore(tmp_path)
    assert store.versions(7) == [] and store.current(7) is None
    leftovers = list(store.project_dir(7).glob(".tmp-*"))
    assert len(leftovers) == 1
    os.utime(leftovers[0], (0, 0))  # make it look hours old
    store.prune(7, keep=3)
    assert not list(store.project_dir(7).glob(".tmp-*"))


def test_activate_refuses_missing_version(tmp_path):
    with pytest.raises(FileNotFoundError):
        VersionStore(tmp_path).activate(1, "v9")


@pytest.mark.parametrize("content", [b'{"val_accuracy": 0.7', b"\xff\xfe", b"[1, 2]"], ids=["cut", "not-utf8", "list"])
def test_an_unreadable_metrics_file_is_a_warning_naming_it_not_an_empty_record_in_silence(tmp_path, caplog, content):
    store = VersionStore(tmp_path)
    with store.new_version(4) as pending:
        (pending.path / "metrics.json").write_bytes(content)
    store.activate(4, pending.name)
    with caplog.at_level("WARNING", logger="model.store"):
        assert store.metrics(4, "v1") == {}  # the version is still there to serve
    named = f"cannot read {tmp_path / '4' / 'v1' / 'metrics.json'}"
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [named]
    caplog.clear()
    assert store.metrics(4, "v9") == {} and caplog.records == []  # absent is no problem
