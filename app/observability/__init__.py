"""Prometheus metrics (one module, prefix recoloop_) and the worker's /health and /ready.
Fed by the stream runtime, never importing it; imports prometheus_client and the stdlib."""
