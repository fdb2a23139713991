"""Evaluation: inference over a COCO-format dataset (`inference`), COCO box/mask AP by class group, ambiguous
instances, the prior as a mask and oracle-box IoU (`metrics`, `coco_eval`), and the mask encoding they share."""

from .inference import infer_images, oracle_ious, run_inference
from .metrics import METRIC_KEYS, compute_metrics, evaluate_model, format_table, log_evaluation, write_metrics

__all__ = ["METRIC_KEYS", "compute_metrics", "evaluate_model", "format_table", "infer_images", "log_evaluation",
           "oracle_ious", "run_inference", "write_metrics"]
