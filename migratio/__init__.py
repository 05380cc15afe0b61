"""migratio: migrate VM templates (cloud images) between cloud sites."""

__version__ = "0.1.0"
