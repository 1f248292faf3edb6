"""`python -m bench`: run the benchmarks and print a Markdown table."""

import sys

from bench.run import main

sys.exit(main())
