"""`python -m client` is the `densepred` command."""

import sys

from client.cli import main

sys.exit(main())
