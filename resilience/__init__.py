"""Resilience suites: fault injection (tests/test_faults.py) and abuse (tests/test_abuse*.py)
against a real server process. ``python -m resilience.run [faults|abuse|all]`` runs them and
prints a table of scenario, figure and pass/fail; ``tools`` holds the fault injectors and the
bounded load loop they share."""
