"""Triton python-backend models. Each file is copied as `<model>/<version>/model.py` into a
model repository (serving/repository.py); they import the installed tbps packages."""
