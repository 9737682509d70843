"""Kafka plumbing shared by the worker, the rank service, the CLI, the simulator and tests:
every client's configuration (``clients``), one topic read into memory (``reader``) and the
topics' creation and layout (``topic_admin``). Imports the contract, settings and
confluent-kafka; never the stream runtime, the service or the evaluation."""
