"""The Redis key layout: every key name in one place, hash-tagged for a cluster."""

from __future__ import annotations


class KeyLayout:
    """Every key name, in one place (the README documents the same layout).

    Only normalised values (``ipaddress`` output, validated user names) are ever put in a key.
    The part in braces is the key's hash tag: on a Redis Cluster only it decides the slot, so
    every key one script touches carries the same tag. A client's log, the grants of the
    addresses in it and their audit records are tagged with the client's counted network; a
    user's grant index with the user.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def client_log(self, network: str) -> str:
        """Sorted set: one member per accepted message of a client network, scored by time."""
        return f"{self.prefix}c:{{{network}}}"

    def grant(self, ip: str, network: str) -> str:
        """String (JSON) with a TTL: the client at this exact address (counted under
        ``network``) is not limited."""
        return f"{self.prefix}wl:{{{network}}}:{ip}"

    @property
    def grant_pattern(self) -> str:
        return f"{self.prefix}wl:*"

    @staticmethod
    def address_of(key: str) -> str:
        """The address a grant or offender key is for."""
        return key.rsplit("}:", 1)[-1]

    def user_grants(self, user: str) -> str:
        """Sorted set: the addresses one user has granted, scored by expiry (ms)."""
        return f"{self.prefix}u:{{{user}}}"

    def audit(self, network: str) -> str:
        """Stream: grants, refreshes and removals of the addresses counted under ``network``
        (one stream per network, so a grant and its record are written in one slot)."""
        return f"{self.prefix}audit:{{{network}}}"

    @property
    def audit_pattern(self) -> str:
        return f"{self.prefix}audit:*"

    def offender(self, ip: str, network: str) -> str:
        """Hash with a TTL: a client address' refusals per hour, its last limit and refusal
        (tagged with the network it is counted under, as the decision script touches it)."""
        return f"{self.prefix}o:{{{network}}}:{ip}"

    @property
    def offender_pattern(self) -> str:
        return f"{self.prefix}o:*"

    def nonce(self, nonce: str) -> str:
        """String with a TTL: a webhook nonce already used."""
        return f"{self.prefix}nonce:{nonce}"
