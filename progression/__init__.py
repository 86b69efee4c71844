"""Progression in the notebook: fetch a policy once, then ask it offline what your model would need.

    from progression import LocalPolicy, write_metrics
    credit = LocalPolicy.fetch("credit-underwriting")        # PROGRESSION_URL, PROGRESSION_TOKEN
    credit.features(["age", "zip_code", "bureau_score"])     # age forbidden, zip_code needs a proxy analysis
    credit.evaluate(features=[...], evidence={"metrics": {...}, "model_card": "..."})   # a table in Jupyter
    write_metrics("path/to/repo", metrics)                   # what `progression start` will submit

The evaluation is the engine's own (``engine.evaluation.evaluate_route`` over ``engine.checks``), the same path the
dry-run endpoint and the workflow's checks take, so the notebook's verdict is the one the workflow reaches.
"""

from progression.evidence import (
    EvidenceFormatError,
    evidence_file,
    write_consent_basis,
    write_evidence,
    write_fairness,
    write_latency,
    write_metrics,
    write_model_card,
    write_monitoring_plan,
    write_pii_justification,
    write_proxy_analysis,
)
from progression.policy import LocalPolicy, PolicyMismatch
from progression.report import FeatureReport, Verdict

__all__ = [
    "EvidenceFormatError", "FeatureReport", "LocalPolicy", "PolicyMismatch", "Verdict", "evidence_file",
    "write_consent_basis", "write_evidence", "write_fairness", "write_latency", "write_metrics", "write_model_card",
    "write_monitoring_plan", "write_pii_justification", "write_proxy_analysis",
]
