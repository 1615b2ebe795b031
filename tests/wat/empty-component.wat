;; A valid component that exports nothing: neither a node nor a job.
(component)
