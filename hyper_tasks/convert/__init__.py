"""Checkpoint converters: Hugging Face and t5x formats into our flat parameter dicts.

Submodules are imported explicitly; nothing heavy is imported here.
"""
