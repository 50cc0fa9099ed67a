"""`python -m wam_jax.studies`."""

import sys

from wam_jax.studies import main

sys.exit(main())
