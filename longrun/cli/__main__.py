"""``python -m longrun.cli``."""

import sys

from longrun.cli.main import main

sys.exit(main())
