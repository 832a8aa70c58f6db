"""Layer 3: exact metrics of a model on a split, reports, and run comparison (never imports training)."""
