"""Training progress: a bar on a terminal, a few plain lines an epoch in a log file."""
import io

from trainer.progress import EpochProgress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _epoch(stream, steps=95, every=1):
    progress = EpochProgress(range(steps), steps, 3, 30, every, True, stream)
    for i in progress:
        if progress.due(i):
            progress.report(i, 1.0 / (i + 1), 1e-5)
    progress.end({"t2i": {"R1": 12.5, "mAP": 20.0}})
    return stream.getvalue()


def test_a_log_file_gets_about_ten_lines_an_epoch():
    lines = _epoch(io.StringIO()).splitlines()
    assert len(lines) == 11 and "\r" not in "".join(lines)
    assert lines[0].startswith("epoch 3/30 step 10/95: loss 0.1000") and lines[-2].startswith("epoch 3/30 step 95/95")
    assert lines[-1].startswith("epoch 3/30 done in") and lines[-1].endswith("val t2i R1 12.50 mAP 20.00")
    assert len(_epoch(io.StringIO(), steps=95, every=40).splitlines()) == 4   # log_every sparser still: 40, 80, 95


def test_a_terminal_gets_a_bar():
    out = _epoch(Terminal())
    assert "\r" in out and "95/95" in out and "loss=0.011" in out
    assert io.StringIO().isatty() is False
    silent = io.StringIO()
    progress = EpochProgress(range(5), 5, 1, 1, 1, False, silent)
    assert list(progress) == list(range(5)) and not any(progress.due(i) for i in range(5))
    progress.end(None)
    assert silent.getvalue() == ""
