# Sidekiq's own API, as Sidekiq Web and operators' consoles use it, for the
# tests; prints JSON.
#
#   ruby sidekiq_api.rb REDIS_URL NAMESPACE processes
#     {"size": ProcessSet#size, "processes": [each process's fields], "work": [Workers entries]}
#   ruby sidekiq_api.rb REDIS_URL NAMESPACE dead
#     [each DeadSet entry: the job's fields plus "score", "display_class", "display_args"]
#   ruby sidekiq_api.rb REDIS_URL NAMESPACE retry-all        DeadSet#retry_all
#   ruby sidekiq_api.rb REDIS_URL NAMESPACE retry JID        SortedEntry#retry
require 'json'
require 'sidekiq'
require 'sidekiq/api'

redis_url, namespace, command, jid = ARGV
Sidekiq.configure_client do |config|
  config.redis = { url: redis_url, namespace: namespace }
end

FIELDS = %w[identity hostname started_at pid tag concurrency queues labels busy beat quiet rss rtt_us].freeze

case command
when 'processes'
  set = Sidekiq::ProcessSet.new
  processes = set.map { |process| FIELDS.to_h { |field| [field, process[field]] } }
  work = Sidekiq::Workers.new.map do |process, tid, entry|
    { 'process' => process, 'tid' => tid, 'queue' => entry['queue'],
      'run_at' => entry['run_at'], 'payload' => entry['payload'] }
  end
  puts JSON.generate('size' => set.size, 'processes' => processes, 'work' => work)
when 'dead'
  entries = Sidekiq::DeadSet.new.map do |entry|
    entry.item.merge('score' => entry.score, 'display_class' => entry.display_class,
                     'display_args' => entry.display_args, 'error' => entry.error?)
  end
  puts JSON.generate(entries)
when 'retry-all'
  Sidekiq::DeadSet.new.retry_all
  puts JSON.generate('size' => Sidekiq::DeadSet.new.size)
when 'retry'
  entry = Sidekiq::DeadSet.new.find_job(jid) or abort("no dead job #{jid}")
  entry.retry
  puts JSON.generate('retried' => jid)
else
  abort "unknown command #{command}"
end
