# Atmosphere's feedback worker for a real Sidekiq server: each status message
# migratio sends is appended to $FEEDBACK_FILE as one JSON line
# [jid, image uuid, source site, destination site, status text].
#
#   REDIS_URL=... REDIS_NAMESPACE=atmosphere FEEDBACK_FILE=... \
#     sidekiq -r ./feedback_worker.rb -q feedback -c 1
require 'json'
require 'sidekiq'

Sidekiq.configure_server do |config|
  config.redis = { url: ENV.fetch('REDIS_URL'), namespace: ENV.fetch('REDIS_NAMESPACE') }
end

module Atmosphere
  class UpdateMigrationJobStatusWorker
    include Sidekiq::Worker

    sidekiq_options queue: :feedback
    sidekiq_options retry: false

    def perform(vmt_uuid, source_site_id, dest_site_id, status)
      File.open(ENV.fetch('FEEDBACK_FILE'), 'a') do |file|
        file.puts(JSON.generate([jid, vmt_uuid, source_site_id, dest_site_id, status]))
      end
    end
  end
end
