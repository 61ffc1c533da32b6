"""Judging samples: the issue detectors clean runs (`issues`) and active-learning selection (`select`:
uncertainty, BADGE, TypiClust, k-center)."""
