"""bench/gpu/pack_jpeg_folder.py: the data a GPU training call unpacks must be the tree that was packed."""

import json

import pytest

from bench.gpu.pack_jpeg_folder import main, pack, unpack


def _tree(root):
    files = {"train/cat/1.jpg": b"\xff\xd8cat-one", "train/dog/2.png": b"\x89PNGdog", "test/cat/3.jpg": b"\xff\xd8three",
             "README": b"not an image: not packed"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _read(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_unpack_restores_the_images_byte_for_byte(tmp_path):
    files = _tree(tmp_path / "src")
    pack(tmp_path / "src", tmp_path / "packed")
    assert sorted(p.name for p in (tmp_path / "packed").iterdir()) == ["blob.bin", "index.json.xz"]
    unpack(tmp_path / "packed", tmp_path / "out")
    assert _read(tmp_path / "out") == {k: v for k, v in files.items() if k != "README"}


def test_unpack_reads_the_uncompressed_index_of_earlier_packs(tmp_path):
    (tmp_path / "packed").mkdir()
    (tmp_path / "packed" / "blob.bin").write_bytes(b"abcdef")
    (tmp_path / "packed" / "index.json").write_text(json.dumps([["a/x.jpg", 0, 2], ["b/y.jpg", 2, 4]]))
    unpack(tmp_path / "packed", tmp_path / "out")
    assert _read(tmp_path / "out") == {"a/x.jpg": b"ab", "b/y.jpg": b"cdef"}


def test_an_index_past_the_blob_or_outside_the_tree_is_refused_before_writing(tmp_path):
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "blob.bin").write_bytes(b"abcdef")  # a join that left out a part: the index needs 9 bytes
    (packed / "index.json").write_text(json.dumps([["a/x.jpg", 0, 2], ["b/y.jpg", 2, 7]]))
    with pytest.raises(ValueError, match="holds 6 bytes, its index needs 9: a part is missing"):
        unpack(packed, tmp_path / "out")
    (packed / "index.json").write_text(json.dumps([["a/x.jpg", 0, 2], ["../../escape.jpg", 2, 4]]))
    with pytest.raises(ValueError, match="'../../escape.jpg' would be written outside"):
        unpack(packed, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escape.jpg").exists()


def test_the_command_line_names_what_is_wrong(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv, message in ((["pack", str(tmp_path / "empty"), str(tmp_path / "p")], "no .jpg or .png files under it"),
                          (["unpack", str(tmp_path / "missing"), str(tmp_path / "o")], "No such file or directory")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert message in str(e.value.code) and str(e.value.code).startswith(argv[0] + ": ")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "pack,unpack" in capsys.readouterr().out
    files = _tree(tmp_path / "src")  # and the happy path through the command line
    main(["pack", str(tmp_path / "src"), str(tmp_path / "p2")])
    main(["unpack", str(tmp_path / "p2"), str(tmp_path / "o2")])
    assert _read(tmp_path / "o2") == {k: v for k, v in files.items() if k != "README"}
