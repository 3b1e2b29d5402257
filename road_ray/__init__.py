"""road-ray: ROAD (Reality Oriented ADaptation) for synthetic-to-real semantic segmentation on Ray.

Importing ``road_ray`` never imports Ray: only ``road_ray.on_ray`` (the Ray wiring) does.
"""

__version__ = "0.1.0"
