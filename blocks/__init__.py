"""Prefect blocks for longrun: configuration plus a factory returning core objects."""
