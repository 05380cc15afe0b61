"""Redis job intake: Sidekiq-format jobs become ledger migrations, none lost, none twice."""
