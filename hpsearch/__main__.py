"""``python -m hpsearch``: the CLI, for Ray jobs that run the submitted source tree."""

import sys

from hpsearch.cli import main

sys.exit(main())
