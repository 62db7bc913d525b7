"""``torchrun ... tests/_embed_and_die.py DIE_RANK EMBED_ARGS...``: ``qvimclap embed`` whose rank DIE_RANK is
SIGKILLed right after its second committed batch, as when a node dies mid-run (the test of resuming).

Before dying it waits (up to 2 minutes) until every other rank's shard exists, so that a slow rank on a loaded
machine has started its shard by then, as the test expects of a node that dies mid-run."""

from __future__ import annotations

import os
import signal
import sys
import time

from qvimclap.cli import main
from qvimclap.shards import shard_path
from qvimclap.store import EmbeddingStore

die_rank = int(sys.argv.pop(1))
if int(os.environ.get("RANK", "0")) == die_rank:
    append = EmbeddingStore.append
    commits = []

    def append_then_die(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        append(self, *args, **kwargs)
        commits.append(1)
        if len(commits) == 2:
            out = sys.argv[sys.argv.index("--out") + 1]
            world = int(os.environ["WORLD_SIZE"])
            others = [shard_path(out, rank, world) for rank in range(world) if rank != die_rank]
            deadline = time.monotonic() + 120
            while not all(p.is_file() for p in others) and time.monotonic() < deadline:
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)

    EmbeddingStore.append = append_then_die  # type: ignore[method-assign]
sys.argv[0] = "qvimclap"
main()
