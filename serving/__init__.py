"""serving stage (see ../shared/docs/architecture.md)."""
