"""``abaw video FILE``: valence and arousal for any video, with the runs a user trained.

Faces are found (``detect``), followed and aligned to Aff-Wild2-like 112x112 crops (``track``,
``align``), embedded exactly as the runs' features were (``features``), and predicted by the runs'
ensemble (``predict``); ``outputs`` writes frames.csv, plot.png and the overlay video. ``pipeline`` ties
the stages together and holds the CLI entry. Nothing heavy is imported here.
"""
