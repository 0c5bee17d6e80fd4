"""Which samples a batch holds, in which order: one modality per batch (``modality``), similar lengths
together (``bucketing``), and a resumable order (``resumable``)."""
