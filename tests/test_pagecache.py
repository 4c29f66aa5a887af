"""pagecache.py and `pyllama-q warm`: what a process maps of a file, and
putting a file in 2 MiB page-cache folios (Linux with large folios)."""
import mmap
import os
import subprocess
import sys

import numpy as np
import pytest

from pyllama_q.pagecache import mapped_kb, warm

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="no /proc/self/smaps")

MB = 1 << 20


def _write(path, data, step):
    with open(path, "wb", buffering=0) as f:
        for i in range(0, len(data), step):
            f.write(data[i:i + step])


def _huge_share_of_fresh_write(tmp_path):
    """Share of a file written in one 8 MiB write that maps with 2 MiB pages:
    whether this kernel and file system make 2 MiB page-cache folios at all
    (independent of the code under test)."""
    p = tmp_path / "probe.bin"
    _write(p, b"\1" * (8 * MB), 8 * MB)
    with open(p, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        a = np.frombuffer(m, dtype=np.uint8)
        int(a[::4096].sum())
        rss, huge = mapped_kb(p)
        del a
    finally:
        m.close()
    return huge / rss if rss else 0.0


def test_mapped_kb_counts_this_process_map_of_a_file(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"\1" * (3 * MB))
    other = tmp_path / "other.bin"
    other.write_bytes(b"\0" * 4096)
    with open(p, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        assert mapped_kb(p) == (0, 0)   # mapped, nothing touched yet
        a = np.frombuffer(m, dtype=np.uint8)
        assert int(a[:MB:4096].sum()) == 256
        rss, huge = mapped_kb(p)
        assert 1024 <= rss <= 3 * 1024 and 0 <= huge <= rss
        assert mapped_kb(other) == (0, 0)
        del a
    finally:
        m.close()


def test_warm_rereads_a_file_cached_in_small_pages(tmp_path):
    """A file written in 64 KiB pieces is cached in 4 KiB pages; warm drops it
    and reads it again in 2 MiB folios, and a second warm leaves it. The
    bytes do not change."""
    if _huge_share_of_fresh_write(tmp_path) < 0.9:
        pytest.skip("this kernel / file system makes no 2 MiB page-cache folios")
    data = np.random.default_rng(5).integers(0, 256, 16 * MB, dtype=np.uint8).tobytes()
    p = tmp_path / "model.bin"
    _write(p, data, 64 << 10)
    r = warm(p)
    assert r["before"] < 0.5 and r["reread"] and r["after"] >= 0.9, r
    r2 = warm(p)
    assert not r2["reread"] and r2["after"] >= 0.9, r2
    assert p.read_bytes() == data
    # as-is: reads, changes nothing
    r3 = warm(p, huge=False)
    assert not r3["reread"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pyllama_q", *args], capture_output=True,
                          text=True)


def test_warm_command(tmp_path):
    p = tmp_path / "m.gguf"
    _write(p, b"\2" * (4 * MB), 64 << 10)
    r = _cli("warm", str(p))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{p}: 4.2 MB cached, ") and "% in 2 MiB pages (before: " in r.stdout
    missing = _cli("warm", str(tmp_path / "nope.gguf"))
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [f"pyllama-q: error: {tmp_path / 'nope.gguf'}: no such file"]
    d = _cli("warm", str(tmp_path))
    assert d.returncode == 1 and "is a directory" in d.stderr
