"""OpenStack sites through Glance v2 (openstacksdk)."""
