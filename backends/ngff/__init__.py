"""NGFF: zarr stores as OME-NGFF: the plane index, reading, writing, the NGFF documents
and the zarr backend in front of them. Imports storage, guards and the vocabulary."""
