"""Reporting for the scripts in scripts/: methods side by side with confidence intervals, the
compressed-sensing baseline, lesion studies and figures. No bundle run imports this package, so
a run does not load scipy.stats, matplotlib or the CS code."""
