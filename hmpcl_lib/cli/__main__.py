"""`python -m hmpcl_lib.cli`: the `hmpcl` command."""

import sys

from hmpcl_lib.cli import main

sys.exit(main())
