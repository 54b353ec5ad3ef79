"""Which consumers each role runs (the web role runs none: it serves HTTP)."""

from consumers.dead_letters import DeadLetterRecorder
from consumers.deliveries import SENDERS
from consumers.notifier import Notifier
from consumers.processor import Processor

ROLES = {"processor": (Processor, DeadLetterRecorder), "notifier": (Notifier, *SENDERS)}
