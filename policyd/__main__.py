"""``python -m policyd`` is the ``smtp-whitelist`` command."""

from policyd.cli import main

main()
