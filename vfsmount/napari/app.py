"""``vfsmount napari [PATH...]``: a napari viewer with the plugin's widgets, listening for runs."""
from __future__ import annotations


def set_up(viewer, paths: list[str], address: str):
    """The plugin's dock widgets in ``viewer``, listening at ``address``, and each PATH opened
    with the vfsmount reader: everything ``vfsmount napari`` does but start napari (the
    tests run this in the viewer they already have). The stream widget."""
    from .widget import FieldWidget, StreamWidget
    stream = StreamWidget(viewer, address)
    viewer.window.add_dock_widget(stream, name="Run stream", area="right")
    viewer.window.add_dock_widget(FieldWidget(viewer), name="Plate field", area="right")
    stream.toggle()                     # listening from the start
    for path in paths:
        viewer.open(path, plugin="vfsmount")
    print(f"vfsmount napari: listening at {address} "
          f"(vfsmount run PIPELINE PLATE --stream napari:{address})", flush=True)
    return stream


def run_viewer(paths: list[str], address: str) -> int:
    import napari
    set_up(napari.Viewer(title="vfsmount"), paths, address)
    napari.run()
    return 0
