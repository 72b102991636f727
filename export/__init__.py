"""export stage (see ../shared/docs/architecture.md)."""
