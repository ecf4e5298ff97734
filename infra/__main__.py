"""What ``pulumi up`` runs (``main: infra/`` in Pulumi.yaml).

Pulumi executes this file with ``infra/`` itself on ``sys.path``; the program imports
itself as the ``infra`` package (as the tests and tools do), so the repository root
goes first on the path.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from infra.program import main  # noqa: E402

main()
