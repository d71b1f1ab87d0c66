"""``python -m scire_jax.apps.train``: the ``scire-jax train`` command."""

import sys

from scire_jax.apps.train.cli import main

sys.exit(main())
