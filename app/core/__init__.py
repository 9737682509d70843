"""The pure core: events, reward join, sessions, arms and their statistics, bandit, engine.
Plain synchronous Python over a Store protocol; imports only the standard library and River."""
