"""LMDeploy op Impls that call ``dlinfer.ops`` (one module per op family)."""
