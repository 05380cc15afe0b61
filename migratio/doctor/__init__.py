"""``migratio doctor``: is this host ready to migrate? One verdict per check.

``result`` is what a check answers (ok / warn / fail and why); ``runner`` runs
every check under a timeout, the checks of each site in order and the sites side
by side. One module per kind of check: ``config_files``, ``ledger``,
``redis_server``, ``work_dir``, ``qemu_img``, ``openstack_site``, ``aws_site``,
``ssh_site``. Checks only read, except where the only proof that something may
be written is to write it (a probe file, a queued Glance image without data),
and then they remove what they wrote at once.
"""
