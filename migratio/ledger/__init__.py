"""The SQL ledger: migrations, their audit trail and the artifacts they created."""
