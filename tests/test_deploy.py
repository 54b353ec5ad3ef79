"""deploy/: the supervisor files run exactly the README's commands, those commands and
the example environment make a valid configuration, and the proxy passes what the app
needs (a full-size upload, the WebSocket upgrade)."""

import configparser
import os
import re
import shlex

import pytest

from config import MIB, Config, load_config
from handlers.upload import MULTIPART_OVERHEAD
from tests.conftest import ROOT

DEPLOY = os.path.join(ROOT, "deploy")
SECTION = "### Running the roles under a supervisor (`deploy/`)"


def readme_commands():
    """The first fenced block of the README's supervisor section: one command a line."""
    with open(os.path.join(ROOT, "README.md")) as readme:
        text = readme.read()
    section = text[text.index(SECTION):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def procfile():
    with open(os.path.join(DEPLOY, "Procfile")) as lines:
        return dict(line.strip().split(": ", 1) for line in lines if line.strip())


def unit(name):
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read(os.path.join(DEPLOY, "systemd", name))
    return parser


UNITS = ["photo-app-web@.service", "photo-app-processor@.service", "photo-app-notifier.service"]


def test_the_procfile_and_the_units_run_the_readmes_commands():
    commands = readme_commands()
    assert len(commands) == 3
    assert sorted(procfile().values()) == sorted(commands)
    for name in UNITS:
        service = unit(name)["Service"]
        directory = service["WorkingDirectory"]
        # The unit runs the same command from the checkout's directory, %i as the port.
        command = service["ExecStart"].replace(directory + "/", "").replace("%i", "$PORT")
        assert command in commands, (name, command)
        assert service["EnvironmentFile"] == "/etc/photo-app/photo-app.env"
        assert service["KillSignal"] == "SIGTERM"
        assert unit(name)["Install"]["WantedBy"] == "multi-user.target"


def example_environment():
    with open(os.path.join(DEPLOY, "photo-app.env.example")) as lines:
        return dict(line.strip().split("=", 1) for line in lines
                    if line.strip() and not line.startswith("#"))


@pytest.mark.parametrize("command", readme_commands())
def test_each_command_with_the_example_environment_is_a_valid_configuration(command):
    words = shlex.split(command.replace("$PORT", "5000"))
    assert words[0] == ".venv/bin/python"
    if words[1] == "-m":
        module, args = words[2], words[3:]
        assert os.path.exists(os.path.join(ROOT, *module.split(".")) + ".py"), module
        args = ["--role=" + module.split(".")[1], *args]
    else:
        assert words[1] == "server.py"
        args = words[2:]
    config = load_config(args, environ=example_environment())
    assert config.db_type == "postgres" and config.broker_type == "rabbitmq"
    assert len(config.amqp_urls) == 3 and config.amqp_queue_type == "quorum"
    assert config.trust_proxy_headers and config.log_format == "json"
    assert len(config.roles) == 1


def test_the_proxy_takes_a_full_size_upload_and_the_websocket_upgrade():
    with open(os.path.join(DEPLOY, "nginx.conf")) as conf:
        text = conf.read()
    limit = re.search(r"client_max_body_size (\d+)m;", text)
    assert limit and int(limit.group(1)) * MIB >= Config.max_upload_bytes + MULTIPART_OVERHEAD
    assert "proxy_request_buffering off;" in text
    events = text[text.index("location = /api/events"):]
    events = events[:events.index("}")]
    assert "proxy_set_header Upgrade $http_upgrade;" in events
    assert "proxy_set_header Connection $connection_upgrade;" in events
    assert "proxy_set_header Host $host;" in text  # the socket's origin check compares it
    for port in re.findall(r"server 127\.0\.0\.1:(\d+);", text):
        assert int(port) in (5000, 5001)
