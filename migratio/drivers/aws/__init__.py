"""AWS sites: an image becomes an EBS snapshot and an AMI.

``driver`` is the destination the states see; it parses record ids into
``records`` and hands the bytes to the site's upload method (``upload``):
``ebs_direct`` (with ``ebs_writer`` and ``blocks``) or ``import_snapshot``
(with ``multipart`` and ``staging``). ``snapshots`` and ``amis`` are the EC2
resources both methods end in; ``session``, ``errors`` and ``tags`` are the
transport, the error mapping and the marks migratio leaves on what it makes.
"""
