"""A generic exactly-once runtime on Kafka: records in batches, one transaction per batch,
partition state in RocksDB with a changelog, replicas every worker reads in full, inputs set
aside when they poison or overflow a batch, rebalances and calls that never return.

It runs an :class:`app.stream.runtime.protocol.Application` and knows nothing of what its
processor does. Imports app.kafka, app.observability, app.settings, confluent-kafka and
rocksdict; never app.core, app.contract or the rest of app.stream.
"""
