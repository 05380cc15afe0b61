"""Site drivers: each kind of cloud site implements the small interface in ``base``."""
