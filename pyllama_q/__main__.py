"""`python -m pyllama_q ...` is the `pyllama-q` command."""
import sys

from .cli import main

sys.exit(main())
