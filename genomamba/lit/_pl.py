"""One import point for Lightning: ``pytorch_lightning`` (the package name pip installs with
genomamba), else the unified ``lightning`` distribution's ``lightning.pytorch``."""

try:  # pragma: no cover - whichever is installed
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover
    import lightning.pytorch as pl

__all__ = ["pl"]
