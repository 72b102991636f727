"""Training progress for a person watching: a tqdm bar on a terminal; where stderr is a file (a
log, the demo's), plain lines instead of every redraw of a bar: at most about ten an epoch, and
one at its end with the validation figures. The run's record is log.jsonl either way."""
from __future__ import annotations

import sys
import time
from typing import IO, Iterable

from tqdm import tqdm

LINES_PER_EPOCH = 10


class EpochProgress:
    """Wraps an epoch's batches. `due(i)` says whether step i reports (the caller then reads the
    loss off the device); `report` shows it; `end` closes the epoch."""

    def __init__(self, batches: Iterable, steps: int, epoch: int, epochs: int, every: int, enabled: bool,
                 stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self.desc, self.steps, self.enabled = f"epoch {epoch}/{epochs}", steps, enabled
        self.tty = enabled and self.stream.isatty()
        # a bar's postfix every `every` steps; a log's lines sparser, so an epoch stays a few lines
        self.every = max(1, every if self.tty else max(every, -(-steps // LINES_PER_EPOCH)))
        self.batches = tqdm(batches, total=steps, desc=self.desc, file=self.stream, dynamic_ncols=True) \
            if self.tty else batches
        self.t0 = time.time()

    def __iter__(self):
        return iter(self.batches)

    def due(self, i: int) -> bool:
        return self.enabled and ((i + 1) % self.every == 0 or i + 1 == self.steps)

    def report(self, i: int, loss: float, lr: float) -> None:
        if self.tty:
            self.batches.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        else:
            print(f"{self.desc} step {i + 1}/{self.steps}: loss {loss:.4f}, lr {lr:.3g}, "
                  f"{time.time() - self.t0:.0f} s", file=self.stream, flush=True)

    def end(self, val: dict | None) -> None:
        if self.tty:
            self.batches.close()
        if self.enabled:
            figures = f", val t2i R1 {val['t2i']['R1']:.2f} mAP {val['t2i']['mAP']:.2f}" if val else ""
            print(f"{self.desc} done in {time.time() - self.t0:.1f} s{figures}", file=self.stream, flush=True)
