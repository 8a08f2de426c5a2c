"""Reconstruction: the pre-query template of a chat model, and sampling + cleaning its instructions."""
