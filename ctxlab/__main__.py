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
    finally:
        _forget_interrupted_exec()


def _forget_interrupted_exec() -> None:
    """CPython up to 3.13 marks a KeyboardInterrupt (Ctrl-C, or SIGTERM
    through cli._terminate) that ends code run from a string, as dataclasses
    and namedtuple run it, as never handled, even when caught later; under
    `python -m` it then ends the process by SIGINT after a clean exit
    (Py_RunMain's exit_sigint), so a handled SIGTERM showed as 130, not 143,
    about once in thirty.  Every string exec clears that mark as it starts."""
    exec("")


if __name__ == "__main__":
    main()
