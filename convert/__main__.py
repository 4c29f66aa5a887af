"""`python -m pyllama_q.convert SRC OUT [--type ...]`"""
import sys

from .cli import main

sys.exit(main())
