import sys

from .cli import main

# Guarded: multiprocessing's spawn start method imports the main module in each child process.
if __name__ == "__main__":
    sys.exit(main())
