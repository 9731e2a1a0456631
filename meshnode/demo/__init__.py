"""`meshnode demo`: a heterogeneous mesh that learns from itself, on this machine, in one command.

plan       the nodes, workers and sizes, as data
watch      snapshots of what the nodes say about themselves, and their history
loopback   the mesh as real `meshnode run` daemons on 127.0.0.1
simulated  the same mesh through the link simulator (`--sim wifi`)
present    the live view, the final table, the verdict, result.json and the plot
runner     the whole run, from the install check to the verdict
"""

from .loopback import DemoFailed
from .plan import DEFAULT, FULL, DemoPlan, Sizes
from .runner import DemoNotInstalled, DemoRun, run_demo

__all__ = ["DEFAULT", "FULL", "DemoFailed", "DemoNotInstalled", "DemoPlan", "DemoRun", "Sizes", "run_demo"]
