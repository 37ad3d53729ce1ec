"""``python -m recsys_client.loadtest``: the recsys-loadtest command."""

from recsys_client.loadtest.cli import main

main()
