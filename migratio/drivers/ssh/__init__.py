"""OpenStack sites reached only by SSH to a host that runs the ``openstack`` CLI."""
