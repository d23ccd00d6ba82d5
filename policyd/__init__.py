"""The policy server for Postfix's SMTP access policy protocol, and the ``smtp-whitelist`` CLI."""
