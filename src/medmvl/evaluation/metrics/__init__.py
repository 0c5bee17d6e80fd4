"""Per-question metrics with documented definitions (docs/metrics.md): closed questions and open recall
(``closed``), multiple-choice letters (``choice``), token F1 / BLEU / ROUGE-L (``text``)."""
