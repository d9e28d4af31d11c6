"""The synthetic Aff-Wild2 release: plan, signals, media and the generator (``generate``)."""
