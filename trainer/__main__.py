"""`python -m trainer ...` is `tbps ...` (what torchrun launches: `torchrun -m trainer train ...`)."""
from trainer.cli import main

main()
