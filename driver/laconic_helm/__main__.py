"""`python -m laconic_helm` and the `laconic-helm` command: signals are held first of all."""

from laconic_helm import interrupt


def run() -> None:
    # Held from here to the exit: a signal while the CLI loads stops the run before it begins,
    # one while the report is written or the interpreter shuts down changes nothing.
    interrupt.hold()
    from laconic_helm.cli import main

    try:
        main()
    finally:
        interrupt.settle()


if __name__ == "__main__":
    run()
