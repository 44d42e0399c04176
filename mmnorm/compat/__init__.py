"""Workarounds for the pinned OpenMMLab stack, kept in one place so that
they can be deleted when upstream fixes land."""
