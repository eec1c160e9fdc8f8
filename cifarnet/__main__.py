"""`python -m cifarnet ...`: the `cifarnet-exp` command line (how `--workers` starts its
workers, with the interpreter that runs the command)."""

from cifarnet.cli.main import main

if __name__ == "__main__":
    main(prog_name="cifarnet-exp")
