"""The load benchmark: the running suite against same-run ceilings (`python -m bench`, docs/bench.md)."""
