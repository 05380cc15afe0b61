"""``python -m migratio``: the same as the ``migratio`` command."""

from migratio.cli import main

main()
