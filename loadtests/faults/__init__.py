"""The fault suite of issue 14: `python -m loadtests.faults` runs each fault scenario under mixed load
against a real `bentoml serve` of this checkout on loopback and writes docs/reliability.md.

mix.py        the mixed load (open loop) and the feedback ledger
inject.py     finding the service's processes, signalling them, what a kill left behind
store.py      the isolated model store and the ways to break a version
feedback.py   the feedback events the journal or Redis holds, read directly
suite.py      profiles (full, quick), services, Redis, the load, the feedback check
verdict.py    figures and issue 14's targets (pure)
render.py     docs/reliability.md (pure)
scenarios/    triton.py, redis.py, shutdown.py, promote.py, overload.py, watcher.py
"""
