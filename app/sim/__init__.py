"""The shopper simulator: pure, seeded worlds (``common`` holds what they share, ``items`` the
item world, ``world`` the arm table, ``worlds`` picks one by name), their Kafka runner and the
demo. The worlds import app.core, app.contract and app.settings; the runner and demo import
app.kafka's topic admin and app.dev."""
