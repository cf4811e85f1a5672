"""`python -m mlops_assets.cli`: the same as the `mlops` command."""

import sys

from mlops_assets.cli.main import entry

sys.exit(entry())
