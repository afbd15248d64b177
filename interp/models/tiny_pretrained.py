"""Moved to `interp.testing` (test-model builders are not models); this name keeps old imports working."""

from interp.testing import CORPUS, SQUAD, TEXT, make_folders, make_tokenizer, save_mamba, save_pythia

__all__ = ["CORPUS", "SQUAD", "TEXT", "make_folders", "make_tokenizer", "save_mamba", "save_pythia"]
