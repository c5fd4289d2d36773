"""bench/gpu/pack_jpeg_folder.py: the data a GPU training call unpacks must be the tree that was packed."""

import json

from bench.gpu.pack_jpeg_folder import pack, unpack


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
