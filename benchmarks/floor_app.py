"""The floor of any Typer CLI: the smallest app ctxlab's startup is measured
against (one command, two options, prints a line).

    python benchmarks/floor_app.py --name you --times 2

Every Typer command pays for typer, click and, since typer 0.29, pydantic
(it builds a TypeAdapter per parameter when a command runs): `ctxlab list`
cannot start faster than this, so its budget is a ratio to it.
"""

import typer

app = typer.Typer()


@app.command()
def greet(
    name: str = typer.Option("world", help="Whom to greet."),
    times: int = typer.Option(1, help="How many times."),
) -> None:
    """Print a greeting."""
    for _ in range(times):
        typer.echo(f"hello {name}")


if __name__ == "__main__":
    app()
