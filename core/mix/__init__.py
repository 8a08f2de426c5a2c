"""Mixing: domain data import and formats, the ratio mix of general and domain data, frozen snapshots."""
