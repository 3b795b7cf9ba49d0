"""`python -m sandbox.hostagent OP ...`: the agent run from a checkout (tests, this machine)."""

import sys

from sandbox.hostagent.main import main

sys.exit(main())
