"""kernels stage (see ../shared/docs/architecture.md)."""
