"""`python -m hf_conpet.cli`."""

import sys

from . import main

sys.exit(main())
