# Pushes a migration job the way Atmosphere's VmtMigrator does:
# Sidekiq::Client.push with queue "migration_<source site id>", the migrator
# class and args [source image uuid, destination site id], through
# redis-namespace. Prints the job id.
#
#   ruby enqueue.rb REDIS_URL NAMESPACE SOURCE_SITE openstack|aws IMAGE_UUID DEST_SITE
require 'sidekiq'

# Atmosphere requires these from the legacy worker's gem; the client only
# needs the constants (their names become the payload's "class").
module Migratio
  module Worker
    class OpenstackOpenstackMigrator
      include Sidekiq::Worker
    end

    class OpenstackAmazonMigrator
      include Sidekiq::Worker
    end
  end
end

redis_url, namespace, source_site, technology, image_uuid, dest_site = ARGV
Sidekiq.configure_client do |config|
  config.redis = { url: redis_url, namespace: namespace }
end

migrator_class =
  case technology
  when 'aws' then Migratio::Worker::OpenstackAmazonMigrator
  when 'openstack' then Migratio::Worker::OpenstackOpenstackMigrator
  end

jid = Sidekiq::Client.push(
  'queue' => "migration_#{source_site}",
  'class' => migrator_class,
  'args' => [image_uuid, dest_site]
)
puts jid
