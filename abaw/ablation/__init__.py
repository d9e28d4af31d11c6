"""``abaw ablate``: fusion variants x seeds x synthetic complementarity levels on the same cached
features, scored on validation and on the hidden test, in one table (see ``abaw.ablation.run``)."""
