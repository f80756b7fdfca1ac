"""The mount's views: each folder (or root file) of the mounted tree, built from a plate's
image sets and what they can do (``backends.plates.image_set.ImageSet``), nothing else.

A view is a function ``view(mount: views.base.Mount) -> iterable of (name, node)``: the root
entries it adds. ``vfsmount/tree.py`` lists them (``VIEWS``) and puts their entries side by
side; a new view is one module here and one line there. A view asks an image set what it
can serve (``serves_files``, ``serves_planes``, ``stats_in_bulk``) and its ``physics``; it
never asks a backend's kind or reads a backend's private fields.
"""
