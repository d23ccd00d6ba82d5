"""The one Postfix request builder: every attribute Postfix 3.7 sends, some changed."""

from __future__ import annotations

from policyd.protocol import encode_request

# Every attribute Postfix 3.7 sends (SMTPD_POLICY_README, "Protocol description"), in its order;
# compatibility_level and mail_version only came with 3.8.
POSTFIX_37_REQUEST: dict[str, str] = {
    "request": "smtpd_access_policy",
    "protocol_state": "RCPT",
    "protocol_name": "ESMTP",
    "helo_name": "pc42.cs.example.edu.tw",
    "queue_id": "8045F2AB23",
    "sender": "alice@cs.example.edu.tw",
    "recipient": "bob@example.org",
    "recipient_count": "0",
    "client_address": "198.51.100.23",
    "client_name": "pc42.cs.example.edu.tw",
    "reverse_client_name": "pc42.cs.example.edu.tw",
    "instance": "123.456.7",
    "sasl_method": "plain",
    "sasl_username": "alice",
    "sasl_sender": "",
    "size": "12345",
    "ccert_subject": "solaris9.porcupine.org",
    "ccert_issuer": "Wietse+20Venema",
    "ccert_fingerprint": "C2:9D:F4:87:71:73:73:D9:18:E7:C2:F3:C1:DA:6E:04",
    "encryption_protocol": "TLSv1.3",
    "encryption_cipher": "TLS_AES_256_GCM_SHA384",
    "encryption_keysize": "256",
    "etrn_domain": "",
    "stress": "",
    "ccert_pubkey_fingerprint": "68:B3:29:DA:98:93:E3:40:99:C7:D8:AD:5C:B9:C9:40",
    "client_port": "49152",
    "policy_context": "submission",
    "server_address": "192.0.2.25",
    "server_port": "587",
}


def postfix_request(**overrides: str) -> dict[str, str]:
    """The Postfix 3.7 request with some attributes changed (``None``-free, order kept)."""
    request = dict(POSTFIX_37_REQUEST)
    request.update(overrides)
    return request


def policy_request(client: str, state: str = "DATA", recipients: int = 1, **extra: str) -> bytes:
    """The Postfix 3.7 request, encoded, for ``client`` at ``state`` with ``recipients``."""
    return encode_request(
        postfix_request(
            protocol_state=state, client_address=client, recipient_count=str(recipients), **extra
        )
    )
