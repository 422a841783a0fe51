"""``python -m cli``: the ``corpuslab`` command."""

from cli.main import main

raise SystemExit(main())
