"""The stream runtime: transactional loop, partition state, changelogs, bandit models.
Talks to Kafka (through app.kafka) and RocksDB; imports core, contract, kafka, observability,
settings."""
