"""The shopper simulator (a pure, seeded world), its Kafka runner and the demo.
The world imports app.core; the runner and demo import stream's topic admin and app.dev."""
