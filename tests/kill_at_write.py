"""``python tests/kill_at_write.py NAME N MODE ARGV...``: run ``cnnbench ARGV...`` and kill the
process (``os._exit``, as ``kill -9`` would: no ``finally``, no clean-up) right after the Nth
completed write of a file called NAME in a run folder (``last.pt``, ``best.pt``, ``metrics.jsonl``,
``results.json``); MODE ``torn`` instead dies halfway through the Nth ``metrics.jsonl`` row.
NAME ``-`` never kills. Writes are the atomic renames into place and the log's appends."""

import os
import sys
from pathlib import Path

from cnnbench.cli import main
from cnnbench.strict_json import dumps
from cnnbench.training import callbacks

NAME, N, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen = {}


def wrote(name: str) -> None:
    seen[name] = seen.get(name, 0) + 1
    if name == NAME and seen[name] == N:
        os._exit(137)


real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    wrote(Path(dst).name)


def after_epoch(self, trainer, row):
    if MODE == "torn" and NAME == "metrics.jsonl" and seen.get(NAME, 0) + 1 == N:
        line = dumps(row) + "\n"
        with open(trainer.run_dir / "metrics.jsonl", "a") as f:
            f.write(line[: len(line) // 2])
        os._exit(137)
    logged(self, trainer, row)
    wrote("metrics.jsonl")


os.replace = replace
logged, callbacks.JSONLog.after_epoch = callbacks.JSONLog.after_epoch, after_epoch
sys.argv = ["cnnbench", *sys.argv[4:]]
main()
