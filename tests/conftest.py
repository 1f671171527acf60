"""Test-wide settings: property tests draw the same examples on every run (a seeded suite).

``HYPOTHESIS_PROFILE=explore`` draws fresh random examples on each run, to hunt for a
counterexample; a failure it finds prints the example, which then belongs in a plain test.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("nearopt", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "nearopt"))
