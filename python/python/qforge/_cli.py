"""The `qforge` command installed by the wheel: the same command-line tool as
the Rust binary, run in this Python process."""

import signal
import sys

from . import _qforge


def main() -> None:
    # Like any command-line tool, Ctrl-C ends the process at once (Python's
    # own handler would only set a flag that native code never looks at).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_qforge.main(["qforge", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
