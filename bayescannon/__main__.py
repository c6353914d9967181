"""``python -m bayescannon``: the same command line as the ``bayescannon`` script."""

from bayescannon.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
