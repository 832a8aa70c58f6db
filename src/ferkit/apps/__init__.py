"""Layer 4: applications on a model: finding faces, predict on photos and videos, the web service."""
