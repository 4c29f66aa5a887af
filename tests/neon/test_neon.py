"""Cross-test of the NEON kernel table: build tests/neon/neon_check.c with the
kernel files of csrc/ for aarch64 (static) and run it under qemu-aarch64,
once on a CPU model with dotprod (SDOT path) and once without (widening
multiplies). Skips with a reason when the cross tools are missing
(apt-get install gcc-aarch64-linux-gnu qemu-user).
"""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "..", "..", "csrc")
KERNEL_FILES = ["quants.c", "dispatch.c", "status.c", "x86_avx2.c", "x86_avx512.c", "arm_neon.c"]
CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"


@pytest.fixture(scope="module")
def neon_binary(tmp_path_factory):
    missing = [t for t in (CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    out = str(tmp_path_factory.mktemp("neon") / "neon_check")
    cmd = [CC, "-O2", "-std=gnu11", "-static", "-pthread", "-Wall", "-Wno-unused-function",
           "-I", CSRC, "-o", out, os.path.join(HERE, "neon_check.c")]
    cmd += [os.path.join(CSRC, f) for f in KERNEL_FILES] + ["-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"cross build failed:\n{res.stderr}"
    return out


@pytest.mark.slow  # cross-compiles the kernel files (~15 s)
@pytest.mark.parametrize("cpu,expect", [("max", "dotprod"), ("cortex-a53", None)])
def test_neon_kernels_match_scalar_under_qemu(neon_binary, cpu, expect):
    res = subprocess.run([QEMU, "-cpu", cpu, neon_binary], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"NEON check failed on qemu -cpu {cpu}:\n{res.stdout}{res.stderr}"
    first = res.stdout.splitlines()[0]
    assert "available: scalar neon" in first, first
    if expect:
        assert expect in first.split(";")[0], first  # the SDOT path was the one tested
    else:
        assert "dotprod" not in first.split(";")[0], first
    assert res.stdout.splitlines()[-1].startswith("ok "), res.stdout
