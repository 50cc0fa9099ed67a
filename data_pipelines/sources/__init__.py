"""Sources: each module reads one dataset's native format and defines a TFDS builder writing clip records."""
