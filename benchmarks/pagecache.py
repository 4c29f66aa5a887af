"""pagecache.py: how the kernel holds a model file in memory (benchmark tool).

What it is: two helpers for compare.py and roofline.py. Engines that map one
file share its page cache, and on Linux with large page-cache folios (6.18 on
ext4 here) the cached file may sit in 2 MiB folios, which every process maps
with 2 MiB pages, or in 4 KiB pages. A decode step streams every weight once
and was measured 5-29 % faster on the first kind (NOTES.md, session 5), for
either engine where it reads the map. Which kind a file gets depends on how it
entered the cache (large aligned writes, or a read through a map that asked
for huge pages: yes; small writes, or plain reads: no), so a benchmark that
does not set it measures the history of the machine. `prepare` sets it and
`mapped_kb` reports what each engine's process actually got.
What it is not: part of the runtime. pyllama_q only asks for huge pages on its
own map (gguf.py) and never evicts a user's cache.
"""
import mmap
import os

import numpy as np


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
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if advise and hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                m.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        a = np.frombuffer(m, dtype=np.uint8)
        int(a[::4096].sum())
        got = mapped_kb(path)
        del a
    finally:
        m.close()
    return got[1] / got[0] if got and got[0] else None


def prepare(path, mode="huge"):
    """Put the whole file in the page cache and return the share of it that
    maps with 2 MiB pages (None if unknown).

    mode "huge": as pyllama-q's own map reads a file that is not cached yet.
    If less than 90 % of the cached file is in 2 MiB folios, the file is
    dropped from the cache (only pages no process maps can go) and read again
    through a map that asks for huge pages. Costs one read of the file from
    disk when it acts. mode "as-is": read it in, change nothing else."""
    if mode == "as-is":
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
        return _touch(path, advise=False)
    if mode != "huge":
        raise ValueError(f"page-cache mode {mode!r}: expected 'huge' or 'as-is'")
    share = _touch(path, advise=True)
    if share is not None and share < 0.9 and hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        share = _touch(path, advise=True)
    return share
