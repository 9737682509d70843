"""The stream runtime: transactional loop, partition state, changelogs, bandit models, admin.
The only layer that talks to Kafka and RocksDB; imports core, contract, observability, settings."""
