"""The worker: the exactly-once runtime (``runtime``, generic) running the recoloop
application (``application``: the ``processor``, its ``replicas``, ``bandits``,
``site_stats`` and the engine's partition ``state``). Imports core, contract, kafka,
observability, settings."""
