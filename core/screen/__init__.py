"""Screening: responses from several models, scores from several judges, and their consensus."""
