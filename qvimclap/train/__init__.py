"""Training: align QVIM towers into a frozen CLAP's audio space (``qvimclap align``).

- :mod:`qvimclap.train.losses`: the weighted InfoNCE / cosine terms between qvim(imitation), qvim(reference)
  and clap(reference);
- :mod:`qvimclap.train.targets`: CLAP targets computed once per dataset into a cached HDF5 store;
- :mod:`qvimclap.train.align`: :class:`~qvimclap.train.align.AlignConfig` and
  :func:`~qvimclap.train.align.train_alignment` (checkpoints, resume, metrics log, curves, DDP).
"""
