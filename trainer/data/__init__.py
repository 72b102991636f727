"""Datasets, tokenizer, transforms and samplers."""
