"""`python -m tmafbench` and the `tmafbench` command.

SIGTERM is made to stop a command the way Ctrl-C does (KeyboardInterrupt, and a remembered stop:
tmafbench/study/signals.py) before anything else loads, so that a batch scheduler's stop in the
command's first second, while the CLI is still importing, also ends with the usual line and exit
status 130 rather than the bare 143 of a default SIGTERM. Only the interpreter's own start-up is
left outside.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def main() -> None:
    from tmafbench.study.signals import signals_held, stop_guard

    try:
        with stop_guard():
            with signals_held():  # an import cut in half leaves its module broken: the stop waits for it
                from tmafbench.cli import main as cli_main

            cli_main()
    except KeyboardInterrupt:  # before a command could report it (the CLI was still loading)
        running_a_study = sys.argv[1:2] == ["study"] and sys.argv[2:3] in (["run"], ["worker"])
        print("interrupted: run the same command again to resume" if running_a_study else "interrupted",
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
