"""Analysis of finished runs: the run folders and the paper's Figure 3 (`runs`, `figure3`), plots, Markdown reports,
the main job's comparison table (`comparison`), and pictures of predictions (`pictures`: per image; `crops`: per
ground-truth box, models side by side)."""
