"""`python -m mitosis.gateway`: render Envoy's configuration (see `--help`)."""

import sys

from mitosis.gateway import main

sys.exit(main())
