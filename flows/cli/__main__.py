"""``python -m flows.cli``: the ``capml`` command."""

from flows.cli import main

main()
