"""``python -m specc`` (also what ``torchrun -m specc train …`` runs)."""

from specc.cli import main

if __name__ == "__main__":
    main()
