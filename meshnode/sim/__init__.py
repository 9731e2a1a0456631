"""`meshnode sim`: scenario files (scenario.py), the runner that plays them with real Nodes over the
simulated network in virtual time (runner.py), and its output (report.py). See docs/SIM.md."""
