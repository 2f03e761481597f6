"""`python -m self_rewarding_lm_pytorch ...` is the `srlm` command."""

import sys

from self_rewarding_lm_pytorch.cli import main

sys.exit(main())
