"""`python -m wam_jax.studies`."""

import sys

from wam_jax.tools.hugepages import reexec_with_hugepages

reexec_with_hugepages()       # the studies train on CPU too: XLA:CPU's step buffers on huge pages

from wam_jax.studies import main  # noqa: E402  (after the re-execution: nothing heavy is loaded twice)

sys.exit(main())
