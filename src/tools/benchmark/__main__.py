"""`python -m src.tools.benchmark`: the parent run, and each part's child process (--child)."""
import sys

from .cli import main

sys.exit(main())
