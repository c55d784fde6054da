import sys

from zsk.cli import run

if __name__ == "__main__":
    sys.exit(run())
