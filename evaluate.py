"""Score predictions (``python evaluate.py predictions=pred.json``) or a saved model on a file
(``python evaluate.py model=<dir> data.annotations=test.json``); definitions in docs/metrics.md."""

from medmvl.cli.evaluate import main

if __name__ == "__main__":
    main()
