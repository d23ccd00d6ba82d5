"""DNS servers for tests, on loopback: a real dnsmasq with its own zone, and one that never answers.

dnsmasq answers only from the records given here (no upstream, no ``/etc/hosts``, no
``resolv.conf``); names and reverse zones listed in ``local`` answer NXDOMAIN when unknown, and
anything outside them is REFUSED, which dnspython reports as a failing server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import dns.reversename

from tests.support import wait_for


def free_dns_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP+TCP port")


@dataclass
class Zone:
    """The records a test's DNS server knows.

    ``ptr`` maps an address to its PTR names; ``forward`` maps a name to its A/AAAA addresses;
    ``local`` lists domains (forward or reverse, e.g. ``2.0.192.in-addr.arpa``) answered only
    from these records, so an unknown name in them is NXDOMAIN; ``forward_to`` sends a domain to
    another server (``(domain, host, port)``), e.g. one that never answers.
    """

    ptr: Mapping[str, Sequence[str]] = field(default_factory=dict)
    forward: Mapping[str, Sequence[str]] = field(default_factory=dict)
    local: Sequence[str] = ()
    forward_to: Sequence[tuple[str, str, int]] = ()

    def config(self) -> str:
        """The dnsmasq configuration file for this zone."""
        lines: list[str] = []
        for address, names in self.ptr.items():
            reverse = dns.reversename.from_address(address).to_text(omit_final_dot=True)
            lines.extend(f"ptr-record={reverse},{name}" for name in names)
        for name, addresses in self.forward.items():
            # address= (not host-record=) so that a forward record never invents a PTR.
            lines.extend(f"address=/{name}/{ipaddress.ip_address(a)}" for a in addresses)
        lines.extend(f"local=/{domain}/" for domain in self.local)
        lines.extend(f"server=/{domain}/{host}#{port}" for domain, host, port in self.forward_to)
        return "\n".join(lines) + "\n"


class Dnsmasq:
    """A dnsmasq process serving one :class:`Zone` on ``127.0.0.1:port``."""

    def __init__(self, binary: str, directory: Path, zone: Zone) -> None:
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.zone = zone
        self.host = "127.0.0.1"
        self.port = free_dns_port(self.host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> tuple[str, int]:
        """The ``(host, port)`` pair for ``DNS_SERVERS``."""
        return (self.host, self.port)

    def start(self) -> None:
        conf = self.directory / "dnsmasq.conf"
        conf.write_text(self.zone.config())
        with (self.directory / "dnsmasq.log").open("wb") as log:
            self.process = self._spawn(conf, log)
        wait_for(self._answers, what=f"dnsmasq on {self.port}")

    def _spawn(self, conf: Path, log: BinaryIO) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                self.binary,
                "--keep-in-foreground",
                f"--conf-file={conf}",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--pid-file=",
                f"--port={self.port}",
                f"--listen-address={self.host}",
                "--bind-interfaces",
                # No cache: each test sees exactly the zone, never an earlier answer.
                "--cache-size=0",
                "--log-facility=-",
                "--log-queries",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.directory / "dnsmasq.log").read_text(errors="replace")
            raise AssertionError(f"dnsmasq exited: {log}")
        with socket.create_connection(self.server, timeout=0.2):
            return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@contextlib.contextmanager
def running_dnsmasq(binary: str, directory: Path, zone: Zone) -> Iterator[Dnsmasq]:
    """Start dnsmasq for ``zone`` and stop it afterwards."""
    server = Dnsmasq(binary, directory, zone)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def silent_dns_server(host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """A UDP socket bound on loopback that receives queries and never answers.

    Unlike a closed port (which answers at once with ICMP port unreachable), this is what a
    DNS server that hangs or drops packets looks like to a resolver: silence until its timeout.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        yield (host, port)
