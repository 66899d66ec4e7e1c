"""``python -m tinymvit`` == the ``tinymvit`` command."""
import sys

from .cli import main

sys.exit(main())
