"""``python -m spoolpost`` runs the command line."""

from spoolpost.cli import main

main()
