"""abaw: valence-arousal estimation on Aff-Wild2."""
__version__ = "0.1.0"
