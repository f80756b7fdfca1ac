"""The napari plugin of vfsmount (``pip install 'vfsmount[napari]'``): a reader that opens a
mount, a plate folder, an OME-Zarr plate (ours or another writer's) or one field
(``MNT/hyperstacks/A01_s001.tif``), a widget that opens one field at full resolution, and the
receiving side of ``vfsmount run --stream napari``.

napari is imported only inside this package's modules, never by the rest of vfsmount:
``napari.yaml`` (the npe2 manifest, entry point ``napari.manifest``) names the functions.
"""
