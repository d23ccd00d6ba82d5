"""The application: composes policyd, webhook and ratelimit; owns the settings and the process.

See README.md ("Architecture") for the shape, and docs/interface.md for the outside contract.
"""
