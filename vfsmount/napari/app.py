"""``vfsmount napari [PATH...]``: a napari viewer with the plugin's widgets, listening for runs."""
from __future__ import annotations


def run_viewer(paths: list[str], address: str) -> int:
    import napari

    from .widget import FieldWidget, StreamWidget
    viewer = napari.Viewer(title="vfsmount")
    stream = StreamWidget(viewer, address)
    viewer.window.add_dock_widget(stream, name="Run stream", area="right")
    viewer.window.add_dock_widget(FieldWidget(viewer), name="Plate field", area="right")
    stream.toggle()                     # listening from the start
    for path in paths:
        viewer.open(path, plugin="vfsmount")
    print(f"vfsmount napari: listening at {address} "
          f"(vfsmount run PIPELINE PLATE --stream napari:{address})", flush=True)
    napari.run()
    return 0
