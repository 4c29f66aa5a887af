"""GGUF reader: agrees with the `gguf` package on real files, and turns every
kind of corruption into a FormatError (never a crash or a hang)."""
import struct

import numpy as np
import pytest

from pyllama_q.errors import FormatError
from pyllama_q.gguf import GGML_TYPES, GGUFFile

gguf = pytest.importorskip("gguf")


def write_small(path, extra_kv=None):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("test.u32", 7)
    w.add_string("test.str", "héllo")
    w.add_array("test.ints", [1, 2, 3])
    w.add_array("test.strs", ["a", "bc", ""])
    w.add_float32("test.f", 0.5)
    for k, v in (extra_kv or {}).items():
        w.add_string(k, v)
    rng = np.random.default_rng(0)
    w.add_tensor("a.weight", rng.standard_normal((4, 64)).astype(np.float32))
    w.add_tensor("b.weight", rng.standard_normal((3, 32)).astype(np.float16))
    q = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32),
                             gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("c.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def small(tmp_path):
    return write_small(tmp_path / "small.gguf")


def test_type_table_matches_gguf_package():
    for tid, (name, blck, size) in GGML_TYPES.items():
        if name == "Q8_1":  # activation-only; the package and ggml disagree on it
            continue
        qt = gguf.GGMLQuantizationType(tid)
        assert qt.name == name
        assert gguf.GGML_QUANT_SIZES[qt] == (blck, size)


def test_reads_small_file(small):
    with GGUFFile(small) as g:
        assert g.version == 3
        assert g.metadata["test.u32"] == 7
        assert g.metadata["test.str"] == "héllo"
        assert list(g.metadata["test.ints"]) == [1, 2, 3]
        assert g.metadata["test.strs"] == ["a", "bc", ""]
        assert g.metadata["general.architecture"] == "llama"
        assert g.tensors["a.weight"].shape == (64, 4)
        ref = gguf.GGUFReader(str(small))
        for t in ref.tensors:
            mine = g.tensors[t.name]
            assert mine.offset == t.data_offset and mine.nbytes == t.n_bytes
            assert mine.type == int(t.tensor_type)
        a = g.array("a.weight")
        assert a.shape == (4, 64) and a.dtype == np.float32
        np.testing.assert_array_equal(a, ref.tensors[0].data)
        assert g.array("c.weight").shape == (2, 68)


def test_sample_model_agrees_with_gguf_package(sample_model):
    with GGUFFile(sample_model) as g:
        ref = gguf.GGUFReader(sample_model)
        assert len(ref.tensors) == len(g.tensors) == 272
        for t in ref.tensors:
            mine = g.tensors[t.name]
            assert (mine.offset, mine.nbytes, mine.type) == (t.data_offset, t.n_bytes, int(t.tensor_type))
            assert list(mine.shape) == [int(x) for x in t.shape]
        for key, field in ref.fields.items():
            if key.startswith("GGUF."):
                continue
            v = field.contents()
            mine = g.metadata[key]
            if isinstance(mine, np.ndarray):
                np.testing.assert_array_equal(mine, np.asarray(v))
            elif isinstance(mine, float):
                assert mine == pytest.approx(v)
            else:
                assert mine == v, key


# ---- corruption --------------------------------------------------------------

def corrupt(tmp_path, small, edit):
    data = bytearray(small.read_bytes())
    data = edit(data) or data
    p = tmp_path / "bad.gguf"
    p.write_bytes(bytes(data))
    return p


def tensor_info_pos(data, name):
    """Byte position just after the name of a tensor info entry."""
    needle = struct.pack("<Q", len(name)) + name.encode()
    i = data.rindex(needle)
    return i + len(needle)


def expect_error(path, match):
    with pytest.raises(FormatError, match=match):
        GGUFFile(path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    expect_error(p, "empty")


def test_bad_magic(tmp_path, small):
    expect_error(corrupt(tmp_path, small, lambda d: d.__setitem__(slice(0, 4), b"GGML")), "not a GGUF")


def test_bad_version(tmp_path, small):
    expect_error(corrupt(tmp_path, small, lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 99))),
                 "version 99")


@pytest.mark.parametrize("cut", [3, 10, 23, 60, 200, -100, -40])
def test_truncated_anywhere(tmp_path, small, cut):
    expect_error(corrupt(tmp_path, small, lambda d: d[:cut]), "truncated|past the end|not a GGUF")


def test_huge_counts(tmp_path, small):
    expect_error(corrupt(tmp_path, small, lambda d: d.__setitem__(slice(8, 16), struct.pack("<Q", 1 << 60))),
                 "exceed the file size")
    expect_error(corrupt(tmp_path, small, lambda d: d.__setitem__(slice(16, 24), struct.pack("<Q", 1 << 50))),
                 "exceed the file size")


def test_huge_string_length(tmp_path, small):
    # the first key's length field sits right after the header
    expect_error(corrupt(tmp_path, small, lambda d: d.__setitem__(slice(24, 32), struct.pack("<Q", 1 << 62))),
                 "truncated")


def test_huge_array_count(tmp_path, small):
    def edit(d):
        i = d.index(b"test.ints") + len(b"test.ints") + 4 + 4  # value type, element type
        d[i:i + 8] = struct.pack("<Q", 1 << 61)
    expect_error(corrupt(tmp_path, small, edit), "truncated")


def test_offset_past_end(tmp_path, small):
    def edit(d):
        i = tensor_info_pos(d, "c.weight") + 4 + 2 * 8 + 4
        d[i:i + 8] = struct.pack("<Q", 1 << 40)
    expect_error(corrupt(tmp_path, small, edit), "past the end")


def test_misaligned_offset(tmp_path, small):
    def edit(d):
        i = tensor_info_pos(d, "c.weight") + 4 + 2 * 8 + 4
        off = struct.unpack_from("<Q", d, i)[0]
        d[i:i + 8] = struct.pack("<Q", off + 1)
    expect_error(corrupt(tmp_path, small, edit), "aligned")


def test_unknown_type(tmp_path, small):
    def edit(d):
        i = tensor_info_pos(d, "b.weight") + 4 + 2 * 8
        d[i:i + 4] = struct.pack("<I", 77)
    expect_error(corrupt(tmp_path, small, edit), "unknown ggml type id 77")


def test_bad_dims(tmp_path, small):
    def edit(d):
        i = tensor_info_pos(d, "b.weight")
        d[i:i + 4] = struct.pack("<I", 9)
    expect_error(corrupt(tmp_path, small, edit), "dimensions")

    def edit0(d):
        i = tensor_info_pos(d, "b.weight") + 4
        d[i:i + 8] = struct.pack("<Q", 0)
    expect_error(corrupt(tmp_path, small, edit0), "bad dimension")


def test_block_split(tmp_path, small):
    def edit(d):  # Q8_0 rows of 65 elements cannot be whole blocks
        i = tensor_info_pos(d, "c.weight") + 4
        d[i:i + 8] = struct.pack("<Q", 65)
    expect_error(corrupt(tmp_path, small, edit), "whole number of Q8_0 blocks")


def test_overlap(tmp_path, small):
    def edit(d):
        i = tensor_info_pos(d, "b.weight") + 4 + 2 * 8 + 4
        d[i:i + 8] = struct.pack("<Q", 0)  # on top of a.weight
    expect_error(corrupt(tmp_path, small, edit), "overlap")


def test_unknown_value_type(tmp_path, small):
    def edit(d):
        i = d.index(b"test.u32") + len(b"test.u32")
        d[i:i + 4] = struct.pack("<I", 42)
    expect_error(corrupt(tmp_path, small, edit), "unknown metadata value type 42")


def test_random_corruption_never_crashes(tmp_path, small):
    """Flip bytes all over the header: every outcome is a clean open or a FormatError."""
    good = small.read_bytes()
    header_end = GGUFFile(small).data_offset
    rng = np.random.default_rng(1)
    for trial in range(300):
        d = bytearray(good)
        for _ in range(rng.integers(1, 4)):
            d[rng.integers(0, header_end)] = rng.integers(0, 256)
        p = tmp_path / f"r{trial}.gguf"
        p.write_bytes(bytes(d))
        try:
            GGUFFile(p).close()
        except FormatError:
            pass


def _vm_flags(addr):
    """VmFlags of this process's mapping holding addr (Linux), else None."""
    try:
        with open("/proc/self/smaps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return None


def test_map_asks_for_huge_pages(small):
    """The weights map carries MADV_HUGEPAGE ("hg" in smaps), set before the
    header is read, so pages read from disk can come in 2 MiB folios."""
    import mmap
    import os
    if not hasattr(mmap, "MADV_HUGEPAGE") or not os.path.isdir("/sys/kernel/mm/transparent_hugepage"):
        pytest.skip("no transparent huge pages on this platform")
    g = GGUFFile(small)
    try:
        flags = _vm_flags(g.address("a.weight"))
        if flags is None:
            pytest.skip("no /proc/self/smaps")
        assert "hg" in flags, flags
    finally:
        g.close()
