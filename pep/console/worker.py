"""One worker of ``tessera serve --workers N``, with the operator console on its HTTP
port (the parent runs ``python -m pep.console.worker``)."""

import sys

from pdp import workers
from pep.console.app import console

if __name__ == "__main__":
    sys.exit(workers.main(extensions=[console]))
