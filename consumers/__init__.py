"""Queue consumers: ``processor`` (uploads -> database), ``dead_letters`` (the
recorder) and ``notifier`` (events -> actions).

``consumers.roles.ROLES`` says which consumers each role runs; ``server.py``,
the composition root, starts them.  Each role also starts on its own
(``python -m consumers.processor``): that is ``server.py --role=processor``,
entered through ``run_role`` without the consumers importing the composition
root back.
"""

import os
import sys

SERVER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "server.py")


def run_role(role):
    """Become ``python server.py --role=ROLE`` with this command's other arguments
    (the same process: its pid, signals and exit code are the server's)."""
    os.execv(sys.executable, [sys.executable, SERVER, "--role=" + role, *sys.argv[1:]])
