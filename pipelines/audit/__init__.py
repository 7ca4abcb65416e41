"""The audit job: score a dataset's completions under its generator and a reference model,
find the divergence tokens, and (scrub) make a version without the rows that carry most of
the generator's fingerprint. `audit` and `scrub` are the public functions."""

from germline.pipelines.audit.pipeline import AuditSummary, audit
from germline.pipelines.audit.scrub import ScrubSummary, scrub

__all__ = ["AuditSummary", "ScrubSummary", "audit", "scrub"]
