"""Training: align QVIM towers into a frozen CLAP's audio space (``qvimclap align``).

One module per concept; :mod:`~qvimclap.train.align` joins them as numbered steps:

- :mod:`~qvimclap.train.config`: :class:`~qvimclap.train.config.AlignConfig` (every setting) and the result;
- :mod:`~qvimclap.train.data`: the split, the targets, the decoded clips, seeded crops and batch order;
- :mod:`~qvimclap.train.model`: the aligned model built from its QVIM source;
- :mod:`~qvimclap.train.losses`: the weighted InfoNCE / cosine terms between qvim(imitation), qvim(reference)
  and clap(reference);
- :mod:`~qvimclap.train.optim`: AdamW, warm-up + cosine schedule, gradient norms;
- :mod:`~qvimclap.train.validation`: precise BatchNorm, validation MRR, the collapse check;
- :mod:`~qvimclap.train.run_dir`: the run folder, checkpoints, metrics log, curves, summary;
- :mod:`~qvimclap.train.distributed`: the torchrun process group;
- :mod:`~qvimclap.train.align`: :func:`~qvimclap.train.align.train_alignment` (checkpoints, resume, DDP).

The frozen targets' cache lives outside ``train`` (:mod:`qvimclap.targets`): evaluation reads it too.
"""
