"""Training on cached features: ``train(cfg) -> (metrics, artifacts)`` in ``abaw.training.train``.

Modules (imported explicitly; this package stays light, without torch):
  runs        run identity: folder names <readable>-<hash8>, identity.json, features.json
  callbacks   per-step reseeding (exact resume), per-epoch console line, session limit, CSV/TB loggers
  folds       official split or K folds by source video, seeded, written as folds.json
  store       per-subject feature readers (pread windows, never whole caches) and labels
  windows     window starts and the stitcher that averages overlapping windows back
  datamodule  FusionDataModule, the seeded per-epoch sampler, batch assembly
  module      FusionModule (LightningModule): masked CCC loss, AdamW + warm-up/cosine, P_VA validation
  inference   running a model over windows and stitching (validation, reports, prediction)
  report      val_predictions.parquet, per_subject.csv; plots in ``plots`` (metrics.csv: CSVLogger)
"""
