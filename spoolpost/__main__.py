"""``python -m spoolpost`` runs the command line."""

from spoolpost.cli import main

if __name__ == "__main__":
    main()
