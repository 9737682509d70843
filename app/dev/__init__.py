"""Development tools: the local single-node KRaft broker, started from the project's files.
Imports the stdlib and confluent-kafka's admin client; used by the CLI, demo, bench, tests."""
