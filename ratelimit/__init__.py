"""Counting and limits in Redis: settings, client prefixes, whitelist grants, the audit trail.

Knows Redis and nothing of sockets, Postfix or HTTP; ``policyd`` and ``webhook`` build on it.
"""
