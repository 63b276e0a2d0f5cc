"""`python -m laconic_helm` and the `laconic-helm` command: the process's signal lifecycle."""

from laconic_helm import interrupt


def run() -> None:
    # Held from here to the exit: a signal while the CLI loads stops the run before it begins,
    # one while the report is written or the interpreter shuts down changes nothing.
    with interrupt.lifetime():
        from laconic_helm.cli import main

        main()


if __name__ == "__main__":
    run()
