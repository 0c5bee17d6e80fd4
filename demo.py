"""Serve the Gradio demo of a saved model: ``python demo.py model=<dir>`` (http://127.0.0.1:7860)."""

from medmvl.cli.demo import main

if __name__ == "__main__":
    main()
