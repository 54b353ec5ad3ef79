"""No password in any log line, URL or error page: a real process started with a
password in every URL (database, cache, broker), grepped."""

import signal
import subprocess
import sys

import pytest

from tests.conftest import free_port
from tests.helpers import make_image
from tests.processes import ROOT, WEB_READY, fetch, process_env, upload

SECRETS = ("pg-secret-1", "redis-secret-2", "amqp-secret-3")


def test_no_password_reaches_the_log_or_a_client(postgres_url, spawn):
    # PostgreSQL trusts local users, so its password is taken and ignored; Redis and
    # RabbitMQ refuse theirs, so their failures are logged (and answered) too.
    database = postgres_url.replace("postgres@", "postgres:%s@" % SECRETS[0], 1)
    port = free_port()
    proc = spawn("server", ["server.py", "--port", str(port)], process_env(
        DATABASE_URL=database, REDIS_URL="redis://:%s@127.0.0.1:6379/0" % SECRETS[1],
        AMQP_URL="amqp://guest:%s@127.0.0.1:5672/%%2F" % SECRETS[2]),
        ready=WEB_READY + ("rabbitmq unavailable",))

    answers = [fetch(port, "GET", "/readyz"), fetch(port, "GET", "/api/images/1/content"),
               upload(port, make_image()), fetch(port, "GET", "/api/uploads/nothing")]
    assert answers[0][0] == 503 and answers[2][0] == 503
    assert proc.stop(signal.SIGTERM) == 0
    log = proc.log()
    assert "postgresql://postgres:***@127.0.0.1" in log
    assert "redis://:***@127.0.0.1:6379/0" in log and "amqp://guest:***@127.0.0.1" in log
    for secret in SECRETS:
        assert secret not in log
        assert secret not in repr(answers)


@pytest.mark.parametrize("env, shown", [
    ({"DATABASE_URL": "mysql://u:db-secret-4@h/d"}, "mysql://u:***@h/d"),
    ({"REDIS_URL": "memcached://:cache-secret-5@h/0"}, "memcached://:***@h/0"),
    ({"REDIS_URL": "redis://:cache-secret-6@h:99999/0"}, "redis://:***@h:99999/0"),
])
def test_a_configuration_error_does_not_show_the_password(env, shown):
    done = subprocess.run([sys.executable, "server.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=process_env(**env))
    assert done.returncode == 2
    assert shown in done.stderr
    assert "secret" not in done.stderr + done.stdout
