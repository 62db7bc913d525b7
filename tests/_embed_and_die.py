"""``torchrun ... tests/_embed_and_die.py DIE_RANK EMBED_ARGS...``: ``qvimclap embed`` whose rank DIE_RANK is
SIGKILLed right after its second committed batch, as when a node dies mid-run (the test of resuming)."""

from __future__ import annotations

import os
import signal
import sys

from qvimclap.cli import main
from qvimclap.store import EmbeddingStore

die_rank = int(sys.argv.pop(1))
if int(os.environ.get("RANK", "0")) == die_rank:
    append = EmbeddingStore.append
    commits = []

    def append_then_die(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        append(self, *args, **kwargs)
        commits.append(1)
        if len(commits) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    EmbeddingStore.append = append_then_die  # type: ignore[method-assign]
sys.argv[0] = "qvimclap"
main()
