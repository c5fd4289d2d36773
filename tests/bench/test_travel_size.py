"""bench/gpu/travel_size.py: what a device call sends, counted as the device tool counts it."""

import subprocess

import pytest

from bench.gpu import travel_size


@pytest.fixture
def repo(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/.gpudata/\n")  # 11 bytes
    (tmp_path / "tracked.py").write_bytes(b"x" * 1000)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    (tmp_path / "untracked.txt").write_bytes(b"y" * 300)  # not ignored: it travels
    (tmp_path / ".gpudata" / "one").mkdir(parents=True)
    (tmp_path / ".gpudata" / "one" / "blob.bin").write_bytes(b"z" * 5000)  # ignored: only when carried
    (tmp_path / ".gpudata" / "one" / "SHA256").write_bytes(b"s" * 70)
    return tmp_path


def test_the_tree_counts_tracked_and_untracked_files_and_ignored_ones_only_when_carried(repo):
    assert travel_size.travel_bytes(repo, []) == (1311, 0)
    assert travel_size.travel_bytes(repo, [".gpudata/one"]) == (1311, 5070)
    assert travel_size.travel_bytes(repo, [".gpudata/one/SHA256", "tracked.py"]) == (1311, 70)  # tracked counts once


def test_a_call_over_64_mib_is_named_and_exits_1(repo, monkeypatch, capsys):
    assert travel_size.main(["--root", str(repo), ".gpudata/one"]) == 0
    assert "= 0.01 MB of 67.11 MB: fits" in capsys.readouterr().out
    monkeypatch.setattr(travel_size, "LIMIT_BYTES", 6000)
    assert travel_size.main(["--root", str(repo), ".gpudata/one"]) == 1
    assert "OVER by 0.00 MB: take the two-part route" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        travel_size.main(["--root", str(repo), ".gpudata/two"])
    assert "carry path '.gpudata/two' does not exist" in capsys.readouterr().err
