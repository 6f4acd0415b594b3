"""Long work, run as jobs: the runner (job rows, leases), consolidation, forgetting,
erasure, transfer (export and import) and maintenance (reindex, doctor, the outbox worker and
the schedules). Each is safe to run again after a crash."""
