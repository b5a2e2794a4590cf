"""``python -m maze_core.cli``: the ``maze`` command."""

from . import main

if __name__ == "__main__":
    main()
