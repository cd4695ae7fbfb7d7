"""`python -m mc.scripted --scenario FILE --port N`: serve a scenario until interrupted."""

import sys

from mc.scripted.server import main

if __name__ == "__main__":
    sys.exit(main())
