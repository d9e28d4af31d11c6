"""Settings of the release reader (where things are)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    root: str = ""  # the release root; empty = the generated demo release under cache/demo/release
    name: str = ""  # release name used as cache key; empty = "demo" or the root folder's name
    # Globs relative to root; folders are discovered, not hard-coded to one ABAW edition.
    annotations: str = "*/VA_Estimation_Challenge"  # holds Train_Set/ and Validation_Set/
    train_set: str = "Train_Set"
    validation_set: str = "Validation_Set"
    crops: str = "cropped_aligned"
    crops_unaligned: str = "cropped"
    video_dirs: list[str] = field(default_factory=lambda: ["."])  # searched recursively
    video_exts: list[str] = field(default_factory=lambda: [".mp4", ".avi"])  # earlier wins
    test_list: str = "*test_set_release.txt"  # glob, searched recursively
    sample_file: str = "*VA_test_set_sample.txt"  # glob, searched recursively
    # Folder names never searched for videos, lists or annotations (the synthetic release keeps its
    # hidden test labels in ground_truth/; the pipeline must not see them).
    exclude_dirs: list[str] = field(default_factory=lambda: ["ground_truth"])
    probe_workers: int = 0  # threads probing videos and listing crops while indexing; 0 = automatic
