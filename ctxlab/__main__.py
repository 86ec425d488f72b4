"""`ctxlab` and `python -m ctxlab`.

The command's first tenth of a second goes to importing typer, rich and
ctxlab's CLI, before `ctxlab.cli.main` can catch anything: Ctrl-C there
must end as it does later (130, no traceback).  (A SIGTERM there ends the
process by its default action, which a shell reports as 143: nothing has
been started yet that would need cleaning up.)"""

import sys


def main() -> None:
    try:
        from ctxlab.cli import main as command

        command()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
