"""The Quix Streams side of ``python -m bench.faust_compare`` (its own venv: requirements.txt)."""
