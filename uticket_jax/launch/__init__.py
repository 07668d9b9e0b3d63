"""Plumbing of the `experiments/` launchers only (the library never imports it): absl flag
handling and one-line errors (`cli`), result files and work directories (`results`), the
pipeline's tables and plots (`report`, `plots`), the machine facts a run records (`machine`), and
the glibc huge-page restart (`hostmem`)."""
