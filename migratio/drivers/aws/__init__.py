"""AWS sites: an image becomes an EBS snapshot and an AMI."""
