"""
cwltool, as its console script runs it: C{python -m cwltool} drops the exit
code (0 even for 33 or a failed workflow), so the engine runs this module.
"""

import sys

from cwltool.main import run

sys.argv[0] = "cwltool"
sys.exit(run())
