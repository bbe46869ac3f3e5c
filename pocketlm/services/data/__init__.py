"""`pocketlm data`: training data for a small model, made on the user's own machine.

- ``synth``: a teacher (a store model, or a remote tier) writes textbook-style passages from
  seed topics crossed with audiences and formats, or labelled examples for a narrow task.
- ``curate``: exact and near-duplicate removal, quality filters, decontamination against
  the evaluation files, and a report of what was dropped and why.
- ``label``: a local teacher's labels for the user's own records (``pocketlm task`` inside).
"""
