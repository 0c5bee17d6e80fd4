"""Answer questions with a saved model: ``python infer.py model=<dir> image=scan.png question="..."``."""

from medmvl.cli.infer import main

if __name__ == "__main__":
    main()
