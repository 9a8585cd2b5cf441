"""Lung-nodule candidate generation with 5-D mean shift, scored like LUNA16."""
