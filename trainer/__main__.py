"""`python -m trainer ...`: the trainer's commands, synth / train / eval (what torchrun launches:
`torchrun -m trainer train ...`). The whole engine's command line is `tbps` (serving/cli.py)."""
from trainer.cli import main

main()
