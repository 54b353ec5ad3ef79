"""Queue consumers: ``processor`` (uploads -> database) and ``notifier`` (events -> actions).

Each runs on its own (``python -m consumers.processor``) or inside ``server.py``.
"""
