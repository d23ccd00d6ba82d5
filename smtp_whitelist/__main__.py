"""``python -m smtp_whitelist`` is the ``smtp-whitelist`` command."""

from smtp_whitelist.cli import main

main()
