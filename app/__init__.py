"""recoloop: a real-time, session-based personalization engine on Kafka."""

__version__ = "0.1.0"
