"""Dock widgets: open one field at full resolution; show the results of runs as they come."""
from __future__ import annotations

import logging

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QComboBox, QFormLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
                            QWidget)

from .layers import field_layers, opened

log = logging.getLogger(__name__)


def plate_layers_in(viewer) -> list:
    return [l for l in viewer.layers if l.metadata.get("vfsmount", {}).get("kind") == "plate"]


def open_field(viewer, meta: dict, well: str, site: int) -> list:
    """Add field (well, site) of the plate a plate layer shows, full resolution, on its slot."""
    image_set = opened(meta["plate"], meta["image_set"])
    slot = meta["slots"].get(f"{well}_s{site:03d}")
    if slot is None:
        raise ValueError(f"{meta['plate']}: no field {well} site {site}")
    layers = []
    for data, kwargs, _kind in field_layers(image_set, well, site, translate=tuple(slot),
                                            prefix=f"{well}_s{site:03d} "):
        layers += viewer.add_image(data, **kwargs)
    return layers


def field_at(meta: dict, world_yx) -> tuple[str, int] | None:
    """The (well, site) whose slot holds a world position (y, x) of the plate view."""
    best = None
    for key, (y, x) in meta["slots"].items():
        if y <= world_yx[0] and x <= world_yx[1] and (best is None or (y, x) > best[1]):
            best = (key, (y, x))
    if best is None:
        return None
    well, site = best[0].split("_s")
    return well, int(site)


class FieldWidget(QWidget):
    """Well and site of the plate shown; "Open" (or a double click on the plate) adds that
    field at full resolution on its slot."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.well, self.site = QLineEdit("A01"), QSpinBox()
        self.site.setRange(1, 10000)
        self.status = QLabel("")
        button = QPushButton("Open field")
        button.clicked.connect(self.open)
        form = QFormLayout(self)
        form.addRow("Well", self.well)
        form.addRow("Site", self.site)
        form.addRow(button)
        form.addRow(self.status)
        napari_viewer.mouse_double_click_callbacks.append(self._double_click)

    def _plate_meta(self) -> dict | None:
        layers = plate_layers_in(self.viewer)
        return layers[0].metadata["vfsmount"] if layers else None

    def open(self) -> list:
        meta = self._plate_meta()
        if meta is None:
            self.status.setText("open a plate first (File > Open Folder...)")
            return []
        try:
            layers = open_field(self.viewer, meta, self.well.text().strip().upper(),
                                self.site.value())
        except ValueError as e:
            self.status.setText(str(e))
            return []
        self.status.setText(f"opened {self.well.text()} site {self.site.value()}")
        return layers

    def _double_click(self, viewer, event) -> None:
        meta = self._plate_meta()
        found = field_at(meta, event.position[-2:]) if meta else None
        if found:
            self.well.setText(found[0])
            self.site.setValue(found[1])
            self.open()


class StreamWidget(QWidget):
    """Listens at an address for ``vfsmount run --stream napari[:ADDRESS]``."""

    def __init__(self, napari_viewer, address: str | None = None) -> None:
        super().__init__()
        from compute.streaming import DEFAULT_ADDRESS
        self.viewer, self.receiver = napari_viewer, None
        self.address = QLineEdit(address or DEFAULT_ADDRESS)
        self.button = QPushButton("Listen")
        self.button.clicked.connect(self.toggle)
        self.status = QLabel("not listening")
        self.received = 0
        form = QFormLayout(self)
        form.addRow("Address", self.address)
        form.addRow(self.button)
        form.addRow(self.status)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.poll)

    def toggle(self) -> None:
        from .stream import StreamReceiver
        if self.receiver is not None:
            self.timer.stop()
            self.receiver.close()
            self.receiver = None
            self.status.setText("not listening")
            self.button.setText("Listen")
            return
        self.receiver = StreamReceiver(self.address.text().strip())
        self.timer.start(50)
        self.status.setText(f"listening at {self.receiver.address}")
        self.button.setText("Stop")

    def poll(self, budget: int = 8) -> int:
        """Take what has come (at most ``budget`` stacks per tick: the viewer stays responsive)."""
        from .stream import apply
        taken = 0
        while self.receiver is not None and taken < budget:
            message = self.receiver.receive(0)
            if message is None:
                break
            apply(self.viewer, *message)
            taken += 1
        self.received += taken
        if taken:
            self.status.setText(f"listening at {self.receiver.address}: {self.received} received")
        return taken
