"""`python -m consortium.cli`."""

from consortium.cli import main

if __name__ == "__main__":
    main()
