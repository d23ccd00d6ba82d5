"""What `smtp-whitelist check` can learn from the local Postfix before any mail flows.

On a Postfix host ``postconf`` answers from main.cf (``$MAIL_CONFIG`` or /etc/postfix). If
``smtpd_data_restrictions`` does not reach the policy server, nothing will ever be counted; the
policy server can only find that out from traffic (policyd.stage_watch), this finds it at once.
Elsewhere (no postconf, no main.cf) nothing can be known, and nothing is said.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil

# Words in smtpd_data_restrictions that reach the policy server: the snippet's names, or a
# check written out by hand.
DATA_CHECK_WORDS = ("smtp_whitelist_check", "smtp_whitelist_clients", "check_policy_service")
# postconf reads one file; more than this means something is wrong with the host, not the file.
POSTCONF_TIMEOUT = 5.0


async def data_check_present() -> bool | None:
    """Whether main.cf's smtpd_data_restrictions asks the policy server; None if unknown."""
    postconf = shutil.which("postconf") or shutil.which("/usr/sbin/postconf")
    if postconf is None:
        return None
    try:
        process = await asyncio.create_subprocess_exec(
            postconf,
            "-h",
            "smtpd_data_restrictions",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(POSTCONF_TIMEOUT):
            out, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return None
    if process.returncode != 0:
        return None  # no main.cf here: not a Postfix host
    value = out.decode("utf-8", "replace")
    return any(word in value for word in DATA_CHECK_WORDS)
