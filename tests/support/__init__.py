"""What every test shares, one of each: the service process runner (ready on READY=1), the CLI
runner, the policy client, the Postfix request builder, the signed-request helper,
make_settings, a real redis-server, and the tool look-up the fixtures use."""

from tests.support.cli import SMTP_WHITELIST, Result, clean_env, run_cli, run_cli_async
from tests.support.inprocess import LOOPBACK_V4, LOOPBACK_V6, RunningServer, policy_server
from tests.support.net import elapsed, free_port, port_open, wait_for
from tests.support.policy import (
    ANSWER_TIMEOUT,
    BlockingPolicyClient,
    PolicyClient,
    ask_once,
    assert_second_message_limited,
)
from tests.support.redis_server import RedisServer
from tests.support.requests import POSTFIX_37_REQUEST, policy_request, postfix_request
from tests.support.service import PolicydProcess, Service, webhook_process
from tests.support.settings import TEST_LIMIT_REPLY, limit_reply, make_settings
from tests.support.tools import require_tool
from tests.support.webhook import signed_request

__all__ = [
    "ANSWER_TIMEOUT",
    "LOOPBACK_V4",
    "LOOPBACK_V6",
    "POSTFIX_37_REQUEST",
    "SMTP_WHITELIST",
    "TEST_LIMIT_REPLY",
    "BlockingPolicyClient",
    "PolicyClient",
    "PolicydProcess",
    "RedisServer",
    "Result",
    "RunningServer",
    "Service",
    "ask_once",
    "assert_second_message_limited",
    "clean_env",
    "elapsed",
    "free_port",
    "limit_reply",
    "make_settings",
    "policy_request",
    "policy_server",
    "port_open",
    "postfix_request",
    "require_tool",
    "run_cli",
    "run_cli_async",
    "signed_request",
    "wait_for",
    "webhook_process",
]
