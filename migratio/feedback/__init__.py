"""Progress feedback to the Atmosphere platform: Sidekiq jobs, sent through a ledger outbox."""
