"""The Faust side of ``python -m bench.faust_compare`` (needs ``pip install -e '.[bench]'``)."""
