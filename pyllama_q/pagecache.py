"""pagecache.py: how the kernel holds a model file in memory, and `pyllama-q warm`.

What it is: on Linux with large page-cache folios (6.18 on ext4 here), a cached
file sits either in 2 MiB folios, which every process maps with 2 MiB pages, or in
4 KiB pages. A decode step streams every weight once and was measured 5-29 %
faster from the first kind (NOTES.md, session 5). Which kind a file gets is fixed
when it enters the cache: read through a map that asked for huge pages (gguf.py
does) or written in large aligned writes (the converter does): 2 MiB; small
writes (most downloads), `cp`, plain reads: 4 KiB, until the cache drops the file.
`mapped_kb` reports what a process got; `warm` puts a file in 2 MiB folios,
dropping and re-reading it if it has to. The runtime never calls `warm` by itself
(it costs a read from disk and drops the user's cache of that file): the
`pyllama-q warm` command and the benchmarks do.
What it is not: portable. Elsewhere `mapped_kb` returns None, and `warm` only
reads the file into the cache.
"""
import mmap
import os
import time

import numpy as np

from .gguf import _advise_huge


def mapped_kb(path, pid="self"):
    """(kB of `path` resident in the process's maps, kB of those mapped with
    2 MiB pages), summed over its mappings of the file; None where
    /proc/PID/smaps cannot be read (not Linux)."""
    real = os.path.realpath(path)
    try:
        with open(f"/proc/{pid}/smaps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    rss = huge = 0
    inside = False
    for line in lines:
        head = line.split(None, 5)
        if head and "-" in head[0] and ":" not in head[0]:   # a mapping's first line
            inside = len(head) == 6 and os.path.realpath(head[5]) == real
        elif inside and line.startswith("Rss:"):
            rss += int(line.split()[1])
        elif inside and line.startswith("FilePmdMapped:"):
            huge += int(line.split()[1])
    return rss, huge


def _touch(path, advise):
    """Map the file, touch every page (reading what is not cached yet), and
    return the share of it mapped with 2 MiB pages (None if unknown)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if advise:
            _advise_huge(m)
        a = np.frombuffer(m, dtype=np.uint8)
        int(a[::4096].sum())
        got = mapped_kb(path)
        del a
    finally:
        m.close()
    return got[1] / got[0] if got and got[0] else None


def _drop(path):
    """Ask the kernel to drop the file's cached pages (those no process maps)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)   # dirty pages (a file just written) cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path, huge=True):
    """Put the whole file in the page cache; return a dict: `before` and
    `after`, the shares of it that map with 2 MiB pages (None if not
    visible here), `reread` (the file was dropped and read again) and
    `seconds`.

    huge=True: if less than 90 % of the cached file is in 2 MiB folios, drop
    it from the cache and read it again through a map that asks for huge
    pages (as pyllama-q's own map reads a file that is not cached). Pages that
    another process maps cannot be dropped and stay as they are.
    huge=False: read the file in with plain reads and change nothing else."""
    t0 = time.perf_counter()
    if not huge:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
        share = _touch(path, advise=False)
        return {"before": share, "after": share, "reread": False,
                "seconds": time.perf_counter() - t0}
    before = after = _touch(path, advise=True)
    reread = False
    if before is not None and before < 0.9 and hasattr(os, "posix_fadvise"):
        _drop(path)
        after = _touch(path, advise=True)
        reread = True
    return {"before": before, "after": after, "reread": reread,
            "seconds": time.perf_counter() - t0}
