"""Train a medical VLM: ``python train.py encoder=siglip llm=qwen2.5 data.annotations=train.json``."""

from medmvl.cli.train import main

if __name__ == "__main__":
    main()
