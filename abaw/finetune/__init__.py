"""Fine-tuning of the visual backbone on the training split's face crops (``abaw finetune``).

Light on purpose: torch, timm and Lightning are imported by the submodules only when a stage runs.
"""
