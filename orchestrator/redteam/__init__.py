"""Red-teaming: attack sets, model-written attacks, judges, the red-team pass, its outputs and the
targeted-training cycle (``pipeline=redteam``, and the harmless part of ``pipeline=eval``)."""
