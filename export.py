"""Export a trained model: ``python export.py ckpt=outputs/train/runs/<run> out=exported/ [format=llava]``."""

from medmvl.cli.export import main

if __name__ == "__main__":
    main()
