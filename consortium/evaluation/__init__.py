"""The evaluation harness: per-item model outputs on benchmark data, cached, and the
routers and collaboration protocols replayed over them (`consortium bench`)."""
