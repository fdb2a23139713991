"""Analysis of finished runs: the run folders and the paper's Figure 3 (`runs`, `figure3`), plots, Markdown reports,
the main job's comparison table (`comparison`), and pictures of predictions (`pictures`: per image; `crops`: per
ground-truth box, models side by side)."""

# The images the crops grid (`crops.pick_instances`, written with `--visualize`) scans for instances to show: a run
# reads them, so the checks before it decode them.
CROP_SCAN_IMAGES = 60
