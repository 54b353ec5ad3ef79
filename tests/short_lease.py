"""The notifier as a child process whose delivery claims last ``LEASE`` seconds.

    python -m tests.short_lease [server.py arguments]

So a test can kill a notifier in the middle of a send (held there by the
receiver, well within WEBHOOK_TIMEOUT) and see another take the delivery over
once the claim has run out, without waiting the real lease.
"""

import sys

LEASE = 3.0

if __name__ == "__main__":
    import consumers.deliveries
    consumers.deliveries.lease_seconds = lambda timeout: LEASE
    import server
    server.main(["--role=notifier", *sys.argv[1:]])
