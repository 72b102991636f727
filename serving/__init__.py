"""serving stage: the Triton model repository, server, clients and the `tbps` command line (see docs/architecture.md)."""
