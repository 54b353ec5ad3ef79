"""A throwaway three-node RabbitMQ cluster beside the machine's default node.

The nodes ``rc1@localhost`` .. ``rc3@localhost`` run from the Debian package's
``rabbitmq-server`` as the ``rabbitmq`` user (the package's wrapper switches to
it when started by root), so they share the default node's Erlang cookie
(``/var/lib/rabbitmq/.erlang.cookie``) with each other and with
``rabbitmqctl``.  Each has ports, data, logs, pid file, plugins file and a
config file of its own under one temporary folder: the system ``rabbitmq.conf``
pins the listener to 5672, and ``RABBITMQ_NODE_PORT`` does not override it, so
each node's own ``RABBITMQ_CONFIG_FILE`` sets ``listeners.tcp.local``.  The
default node (5672) is never touched.

``rabbitmq_cluster`` (tests/conftest.py) is the session fixture that starts the
cluster once and removes it afterwards.
"""

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

NAMES = ("rc1", "rc2", "rc3")
START_TIMEOUT = 60   # seconds a node gets to boot (they take a few each)
CTL_TIMEOUT = 60
STOP_TIMEOUT = 30


class ClusterUnavailable(Exception):
    """This machine cannot run the cluster (no RabbitMQ package, wrong user)."""


def rabbitmqctl(node, *args, timeout=CTL_TIMEOUT, check=True):
    """Run ``rabbitmqctl -n node args``; return its stdout."""
    done = subprocess.run(["rabbitmqctl", "-n", node, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError("rabbitmqctl -n %s %s failed (%s): %s%s" % (
            node, " ".join(args), done.returncode, done.stdout, done.stderr))
    return done.stdout


class Node:
    def __init__(self, name, base, port, dist_port):
        self.node = "%s@localhost" % name
        self.folder = os.path.join(base, name)
        self.port = port
        self.dist_port = dist_port
        self.running = False

    @property
    def url(self):
        return "amqp://guest:guest@127.0.0.1:%d/%%2F" % self.port

    def environment(self):
        config = os.path.join(self.folder, "rabbitmq.conf")
        env = dict(os.environ,
                   RABBITMQ_NODENAME=self.node,
                   RABBITMQ_DIST_PORT=str(self.dist_port),
                   RABBITMQ_CONFIG_FILE=config,
                   RABBITMQ_MNESIA_BASE=os.path.join(self.folder, "mnesia"),
                   RABBITMQ_LOG_BASE=os.path.join(self.folder, "log"),
                   RABBITMQ_PID_FILE=os.path.join(self.folder, "rabbit.pid"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.folder, "enabled_plugins"))
        # The default node's advanced.config (if any) stays its own.
        env.pop("RABBITMQ_ADVANCED_CONFIG_FILE", None)
        return env

    def prepare(self, owner):
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(self.folder, sub))
        with open(os.path.join(self.folder, "rabbitmq.conf"), "w") as conf:
            conf.write("listeners.tcp.local = 127.0.0.1:%d\n" % self.port)
        with open(os.path.join(self.folder, "enabled_plugins"), "w") as plugins:
            plugins.write("[].\n")
        for root, dirs, files in os.walk(self.folder):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(name, owner.pw_uid, owner.pw_gid)

    def start(self):
        """Start the node in the background (see ``await_startup``): in the
        foreground of a session of its own, its console output in console.log
        (where ``-detached`` would keep nothing to read when it fails to boot)."""
        with open(os.path.join(self.folder, "console.log"), "ab") as console:
            self.process = subprocess.Popen(
                ["rabbitmq-server"], env=self.environment(), stdin=subprocess.DEVNULL,
                stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        self.running = True

    def restart(self):
        """Start a stopped node again; it rejoins the cluster on its own."""
        self.start()
        self.await_startup()

    def await_startup(self):
        """Wait until the node runs.  ``await_startup`` fails at once while the
        node's VM has not yet registered its name, so it is tried again."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                rabbitmqctl(self.node, "await_startup", "--timeout", str(START_TIMEOUT),
                            timeout=START_TIMEOUT + 10)
                return
            except AssertionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def stop(self):
        """Stop the node and wait until its Erlang VM has exited; if it will not,
        kill it (the package's wrapper starts it in a session of its own, so
        its pid file names it, not our child)."""
        self.running = False
        pid_file = os.path.join(self.folder, "rabbit.pid")
        try:
            rabbitmqctl(self.node, "stop", pid_file)
        except (AssertionError, subprocess.TimeoutExpired):
            with open(pid_file) as pid:
                os.kill(int(pid.read().strip()), signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)

    def log(self):
        """The node's own log file(s), for a failure message."""
        folder = os.path.join(self.folder, "log")
        paths = [os.path.join(self.folder, "console.log")]
        paths += [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
        text = ""
        for path in paths:
            if os.path.exists(path):
                with open(path, errors="replace") as log:
                    text += "== %s\n%s" % (path, log.read()[-3000:])
        return text


class Cluster:
    """Three clustered nodes; ``nodes[0]`` (rc1) is the one the others join."""

    def __init__(self, free_port):
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            raise ClusterUnavailable("rabbitmq-server is not installed (Debian package "
                                     "rabbitmq-server)")
        try:
            self.owner = pwd.getpwnam("rabbitmq")
        except KeyError:
            raise ClusterUnavailable("there is no rabbitmq user") from None
        if os.geteuid() not in (0, self.owner.pw_uid):
            raise ClusterUnavailable("starting extra RabbitMQ nodes needs root or the rabbitmq "
                                     "user (the nodes share its Erlang cookie)")
        self.base = tempfile.mkdtemp(prefix="photo-app-rabbit-cluster-")
        os.chmod(self.base, 0o755)
        self.nodes = [Node(name, self.base, free_port(), free_port()) for name in NAMES]

    @property
    def urls(self):
        return [node.url for node in self.nodes]

    def start(self):
        started = time.monotonic()
        for node in self.nodes:
            node.prepare(self.owner)
        # rc1 first: were there no cookie yet (the default node never ran), the
        # first node creates it and the others must find it.
        self.nodes[0].start()
        self.nodes[0].await_startup()
        for node in self.nodes[1:]:
            node.start()
        for node in self.nodes[1:]:
            node.await_startup()
        first = self.nodes[0].node
        for node in self.nodes[1:]:
            rabbitmqctl(node.node, "stop_app")
            rabbitmqctl(node.node, "join_cluster", first)
            rabbitmqctl(node.node, "start_app")
        for node in self.nodes:
            node.await_startup()
        running = self.running_nodes(self.nodes[-1])
        assert running == sorted(node.node for node in self.nodes), running
        self.start_seconds = time.monotonic() - started
        return self

    def running_nodes(self, via):
        """The cluster's running nodes as ``via`` sees them."""
        out = rabbitmqctl(via.node, "eval", "rabbit_nodes:all_running().")
        return sorted(name.strip(" '\n[]") for name in out.split(",") if name.strip(" '\n[]"))

    def queue_info(self, via, prefix):
        """{name: (type, arguments)} of the queues whose names start with ``prefix``,
        as node ``via`` lists them (arguments in rabbitmqctl's notation)."""
        out = rabbitmqctl(via.node, "list_queues", "--quiet", "--no-table-headers",
                          "name", "type", "arguments")
        rows = (line.split("\t") for line in out.splitlines() if line.count("\t") == 2)
        return {name: (kind, arguments) for name, kind, arguments in rows
                if name.startswith(prefix)}

    def memory_mb(self):
        """Resident memory of the three nodes' Erlang VMs, in MB."""
        total = 0
        for node in self.nodes:
            try:
                with open(os.path.join(node.folder, "rabbit.pid")) as pid_file:
                    pid = int(pid_file.read().strip())
                with open("/proc/%d/status" % pid) as status:
                    rss = [line for line in status if line.startswith("VmRSS:")]
                total += int(rss[0].split()[1]) // 1024
            except (OSError, ValueError, IndexError):
                pass
        return total

    def close(self):
        for node in reversed(self.nodes):
            if node.running:
                node.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def logs(self):
        return "\n".join("### %s\n%s" % (node.node, node.log()) for node in self.nodes)


@pytest.fixture(scope="session")
def rabbitmq_cluster():
    """The cluster, started once per test session and removed at its end.  Skips
    (fails under REQUIRE_SERVICES=1) where this machine cannot run one."""
    from tests.conftest import REQUIRE_SERVICES, free_port
    try:
        cluster = Cluster(free_port)
    except ClusterUnavailable as exc:
        reason = "cannot start a RabbitMQ cluster here: %s" % exc
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    try:
        cluster.start()
    except Exception:
        logs = cluster.logs()
        cluster.close()
        raise AssertionError("the RabbitMQ cluster did not start; its logs:\n" + logs)
    yield cluster
    cluster.close()
